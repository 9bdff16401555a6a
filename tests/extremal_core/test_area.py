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
