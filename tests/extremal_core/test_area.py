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


def test_partition_equals_the_sort_definition_with_ties():
    torch.manual_seed(0)
    x = torch.rand(4, 300)
    x[:, 100:220] = 0.5  # a big tied group straddling every threshold
    x[1] = 1.0  # all tied
    areas = torch.tensor([0.1, 0.5, 0.37, 0.9])
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    area_loss(a, areas).sum().backward()
    sort_based_loss(b, areas).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)
    assert torch.allclose(area_loss(x, areas), sort_based_loss(x, areas), atol=1e-6)
