import torch

from extremal_core.area import area_loss, reference_zeros


def test_reference_vector_counts():
    assert reference_zeros(260 * 260, 0.1) == int(260 * 260 * 0.9)
    assert reference_zeros(100, 0.25) == 75


def test_area_loss_is_zero_for_an_exact_binary_mask():
    m = torch.zeros(1, 8, 8)
    m[0, :2, :] = 1.0  # 25 % on
    assert area_loss(m, torch.tensor([0.25])).item() == 0.0
    assert area_loss(m, torch.tensor([0.1])).item() > 0.0


def test_vecsort_gradient_float64():
    x = torch.rand(3, 50, dtype=torch.float64, requires_grad=True)
    areas = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: area_loss(m, areas), (x,))


def test_vecsort_gradient_is_the_unsorted_residual():
    x = torch.tensor([[0.9, 0.1, 0.5, 0.7]], requires_grad=True)
    area_loss(x, torch.tensor([0.5])).backward()
    # sorted: 0.1, 0.5, 0.7, 0.9 vs reference 0, 0, 1, 1; gradient 2(v - r)/N back in place
    expected = torch.tensor([[2 * (0.9 - 1), 2 * 0.1, 2 * 0.5, 2 * (0.7 - 1)]]) / 4
    assert torch.allclose(x.grad, expected)


def sort_based_loss(masks: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """The definition, literally: mean((sort(m) - r_a)²) with a stable sort."""
    flat = masks.reshape(masks.shape[0], -1)
    n = flat.shape[1]
    zeros = torch.tensor([reference_zeros(n, float(a)) for a in areas])
    reference = (torch.arange(n)[None, :] >= zeros[:, None]).to(flat.dtype)
    return ((torch.sort(flat, dim=1, stable=True).values - reference) ** 2).mean(dim=1)


def test_without_ties_the_loss_is_the_sort_definition():
    torch.manual_seed(0)
    x = torch.rand(4, 300, dtype=torch.float64)  # distinct values, gaps far above the tolerance
    areas = torch.tensor([0.1, 0.5, 0.37, 0.9])
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    area_loss(a, areas, tie_tolerance=1e-9).sum().backward()
    sort_based_loss(b, areas).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert torch.allclose(area_loss(x, areas), sort_based_loss(x, areas), atol=1e-12)


def tied_rows():
    """Rows of 300 with a group of 120 equal values (0.5) straddling every threshold."""
    torch.manual_seed(0)
    x = torch.rand(4, 300)
    x[:, 100:220] = 0.5
    x[1] = 1.0  # all tied
    return x, torch.tensor([0.1, 0.5, 0.37, 0.9])


def test_a_tied_group_shares_the_reference_mean():
    x, areas = tied_rows()
    n = x.shape[1]
    m = x.clone().requires_grad_(True)
    area_loss(m, areas).sum().backward()
    for row, area in enumerate(areas):
        ones = n - reference_zeros(n, float(area))
        tied = (x[row] - x[row, 150]).abs() <= 1e-5
        above = (x[row] > x[row, 150]) & ~tied
        if not (ones - above.sum() > 0 and ones - above.sum() < tied.sum()):
            continue  # the threshold does not cut this row's group
        share = (ones - above.sum()) / tied.sum()
        target = above.float() + tied.float() * share
        assert torch.allclose(m.grad[row], 2 * (x[row] - target) / n, atol=1e-7)
    # the value is still R_a: the group's members are exactly equal
    assert torch.allclose(area_loss(x, areas), sort_based_loss(x, areas), atol=1e-6)


def test_the_gradient_has_no_index_bias():
    """Reversing the entries reverses the gradient: no top-rows-first rule."""
    x, areas = tied_rows()
    a = x.clone().requires_grad_(True)
    b = x.flip(1).clone().requires_grad_(True)
    area_loss(a, areas).sum().backward()
    area_loss(b, areas).sum().backward()
    assert torch.allclose(a.grad, b.grad.flip(1), atol=1e-7)


def test_rounding_sized_changes_do_not_move_the_gradient():
    """1e-6 relative noise on a tied group changes each entry's gradient by the noise only, where the
    sort definition sends some entries' reference from 0 to 1."""
    x, areas = tied_rows()
    noisy = x * (1 + 1e-6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    grads = []
    for values in (x, noisy):
        m = values.clone().requires_grad_(True)
        area_loss(m, areas).sum().backward()
        grads.append(m.grad)
    n = x.shape[1]
    assert (grads[0] - grads[1]).abs().max() <= 2 * 1e-5 / n
    flipped = []
    for values in (x, noisy):
        m = values.clone().requires_grad_(True)
        sort_based_loss(m, areas).sum().backward()
        flipped.append(m.grad)
    assert (flipped[0] - flipped[1]).abs().max() >= 1.9 / n  # what the old rule did
