import math

import pytest
import torch
from torchray.attribution.extremal_perturbation import MaskGenerator

from extremal_core.masks import MaskGeometry, SmoothMaskGenerator, flat_top_kernel


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize("size,step,sigma", [((224, 224), 7, 21), ((64, 64), 4, 10), ((100, 130), 5, 9.5)])
def test_masks_and_gradients_match_torchray(size, step, sigma, native, request):
    if native:
        request.getfixturevalue("compiled_kernel")
    torch.manual_seed(0)
    ref = MaskGenerator(size, step, sigma)
    ours = SmoothMaskGenerator(*size, step=step, sigma=sigma, native=native)
    assert list(ours.geometry.param_shape) == ref.shape_in
    params = torch.rand(3, *ref.shape_in, dtype=torch.float32)
    p_ref = params.clone().unsqueeze(1).requires_grad_(True)
    p_ours = params.clone().requires_grad_(True)
    crop_ref, full_ref = ref.generate(p_ref)
    crop, full = ours.generate(p_ours)
    assert full.shape == full_ref.squeeze(1).shape
    assert torch.allclose(full, full_ref.squeeze(1), atol=1e-5)
    assert torch.allclose(crop, crop_ref.squeeze(1), atol=1e-5)
    weights = torch.randn_like(full)
    (full_ref.squeeze(1) * weights).sum().backward()
    (full * weights).sum().backward()
    scale = p_ref.grad.abs().max()
    assert torch.allclose(p_ours.grad, p_ref.grad.squeeze(1), atol=1e-4 * scale)


def test_paper_geometry_at_224():
    g = MaskGeometry(224, 224, 7, 21.0)
    assert g.param_shape == (32, 32)
    assert g.full_shape == (260, 260)
    assert g.window**2 == 81


def test_smooth_max_gradient_float64():
    gen = SmoothMaskGenerator(20, 20, step=4, sigma=6.0)
    params = torch.rand(2, *gen.geometry.param_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: gen.generate(p)[1], (params,), eps=1e-6, atol=1e-5)


def test_lemma1_hard_max_dominates_parameters_and_is_lipschitz():
    torch.manual_seed(1)
    gen = SmoothMaskGenerator(56, 56, step=7, sigma=21.0, coldness=math.inf)
    g = gen.geometry
    params = torch.rand(4, *g.param_shape)
    _, full = gen.generate(params)
    # m(u) >= m̄(u) at each parameter's own position, margin + step·i
    at_params = full[:, g.margin_px :: g.step, g.margin_px :: g.step][:, : g.param_shape[0], : g.param_shape[1]]
    assert (at_params >= params - 1e-6).all()
    # Lipschitz with the kernel's constant: max |k'(z)| = 4·(1/2)·e^(-1/2) per unit z, z = d / sigma
    lipschitz = 2 * math.exp(-0.5) / g.sigma
    assert (full.diff(dim=1).abs() <= lipschitz + 1e-6).all()
    assert (full.diff(dim=2).abs() <= lipschitz + 1e-6).all()


def test_flat_top_kernel():
    z = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5])
    expected = torch.tensor([1.0, 1.0, 1.0, math.exp(-0.5), math.exp(-2.0)])
    assert torch.allclose(flat_top_kernel(z), expected)


def test_smooth_mask_is_a_smooth_max():
    """All-ones parameters give a mask of (nearly) ones in the image; all-zeros give zeros."""
    gen = SmoothMaskGenerator(64, 64, step=4, sigma=10.0)
    ones, _ = gen.generate(torch.ones(1, *gen.geometry.param_shape))
    zeros, _ = gen.generate(torch.zeros(1, *gen.geometry.param_shape))
    assert ones.min() > 0.95
    assert zeros.abs().max() == 0


def test_wrong_parameter_shape_is_a_clear_error():
    gen = SmoothMaskGenerator(64, 64, step=4, sigma=10.0)
    with pytest.raises(ValueError, match="mask parameters must be"):
        gen.generate(torch.ones(1, 3, 3))


@pytest.mark.parametrize("size,step,sigma", [((64, 64), 4, 10), ((37, 50), 5, 9.5)])
def test_fused_map_matches_the_reference_ops(size, step, sigma, monkeypatch):
    """The fused smooth max (`fused_masks.py`), run as its plain PyTorch functions (inductor
    compiles exactly these; benchmarks/bench_gpu_proxies.py and tests/gpu run them compiled):
    masks within 1e-5 of the chunked reference ops, gradients to float rounding."""
    from extremal_core import fused_masks

    monkeypatch.setattr(fused_masks, "_compiled", {"forward": fused_masks.fused_forward,
                                                   "backward": fused_masks.fused_backward}.get)
    torch.manual_seed(0)
    reference = SmoothMaskGenerator(*size, step=step, sigma=sigma, native=False)
    fused = SmoothMaskGenerator(*size, step=step, sigma=sigma, native=False, fused=True)
    params = torch.rand(5, *reference.geometry.param_shape)
    weights = torch.randn(5, *size)
    out = []
    for gen in (reference, fused):
        p = params.clone().requires_grad_(True)
        crop, full = gen.generate(p)
        (crop * weights).sum().backward()
        out.append((crop.detach(), full.detach(), p.grad))
    (crop_r, full_r, grad_r), (crop_f, full_f, grad_f) = out
    assert (full_f - full_r).abs().max() <= 1e-5
    assert (crop_f - crop_r).abs().max() <= 1e-5
    assert (grad_f - grad_r).abs().max() <= 1e-5 * grad_r.abs().max()
