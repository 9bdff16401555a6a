"""Deletion / insertion: hand-computed curves on a linear model, RISE's ``CausalMetric.single_run``
transcribed (one image, one forward pass per step) on a tiny CNN, batch invariance, the blur
kernel against an independent unfolding of scipy's ``reflect`` boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.metrics.deletion_insertion import auc, blur, causal_curves, rise_kernel, saliency_rank


def _sigmoid(s: float) -> float:
    return 1.0 / (1.0 + math.exp(-s))


def _linear_model() -> nn.Module:
    """logits [sum of the 4 pixels, 0]: the class-0 softmax probability is sigmoid(sum)."""
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))
    return nn.Sequential(nn.Flatten(), lin).eval()


IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
SALIENCY = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])  # order: 2 (0.9), 3 (0.5), 4 (0.2), 1 (0.1)


@pytest.mark.parametrize(
    ("mode", "step", "substrate", "sums"),
    [
        ("deletion", 1, "zeros", [10, 8, 5, 1, 0]),
        ("deletion", 2, "zeros", [10, 5, 0]),
        ("deletion", 3, "zeros", [10, 1, 0]),  # ceil(4 / 3) = 2 steps, the last one partial
        ("insertion", 1, "zeros", [0, 2, 5, 9, 10]),
        ("insertion", 1, "ones", [4, 5, 7, 10, 10]),  # a hand-made substrate: every pixel 1
    ],
)
def test_linear_model_curve_by_hand(mode: str, step: int, substrate: str, sums: list[float]) -> None:
    sub = torch.ones_like(IMAGE) if substrate == "ones" else substrate
    out = causal_curves(_linear_model(), IMAGE, SALIENCY, torch.tensor([0]), mode, step=step, substrate=sub)
    expected = [_sigmoid(s) for s in sums]
    assert out.step == step
    assert out.curves.shape == (1, len(sums))
    np.testing.assert_allclose(out.curves[0].numpy(), expected, rtol=1e-6)
    n = len(sums) - 1
    trapezoid = (expected[0] / 2 + sum(expected[1:-1]) + expected[-1] / 2) / n
    assert out.auc[0].item() == pytest.approx(trapezoid, rel=1e-6)


def test_ties_go_in_pixel_order_and_default_step_is_one_row() -> None:
    flat = torch.full((1, 2, 2), 0.3)
    out = causal_curves(_linear_model(), IMAGE, flat, torch.tensor([1]), "deletion")  # step = W = 2
    # class 1 has logit 0: probability 1 - sigmoid(sum); rows removed top first: sums 10, 7, 0
    np.testing.assert_allclose(out.curves[0].numpy(), [1 - _sigmoid(s) for s in (10, 7, 0)], rtol=1e-6)
    assert saliency_rank(flat).tolist() == [[0, 1, 2, 3]]


def test_auc_is_the_trapezoid_rule() -> None:
    assert auc(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert auc(torch.tensor([[0.0, 1.0, 1.0, 0.0]])).item() == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------
# RISE's kernel and single_run, transcribed


def _mirror_kernel(size: int, nsig: float) -> np.ndarray:
    """gaussian_filter(delta, nsig) in 1-D by unfolding the boundary: scipy's ``reflect`` extends
    a line of n samples half-sample symmetrically, so a delta at c has images at c + 2kn and
    -1 - c + 2kn; the filter's taps are exp(-x²/2σ²), |x| <= 4σ (rounded), normalised."""
    r = int(4 * nsig + 0.5)
    taps = {j: math.exp(-0.5 * (j / nsig) ** 2) for j in range(-r, r + 1)}
    total = sum(taps.values())
    c = size // 2
    images = [p + 2 * k * size for k in range(-5, 6) for p in (c, -1 - c)]
    k1 = np.array([sum(taps[p - x] / total for p in images if abs(p - x) <= r) for x in range(size)])
    return np.outer(k1, k1)


def test_rise_kernel_unfolds_scipys_reflect_boundary() -> None:
    k = rise_kernel()
    assert k.shape == (11, 11)
    np.testing.assert_allclose(k, _mirror_kernel(11, 5.0), rtol=1e-6)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    # not a truncated Gaussian: the mass reflected back in makes the corners heavier
    g = np.exp(-0.5 * (np.arange(-5, 6) / 5.0) ** 2)
    g = np.outer(g, g) / np.outer(g, g).sum()
    assert k[0, 0] > g[0, 0]


def _rise_single_run(model, img: torch.Tensor, sal: np.ndarray, target: int, mode: str, step: int) -> np.ndarray:
    """RISE's CausalMetric.single_run (evaluation.py), one image, one forward pass per step;
    the model with softmax; class = ``target``; order = argsort of -saliency, stable."""
    klen = 11
    kern = np.zeros((3, 3, klen, klen), np.float32)
    for ch in range(3):
        kern[ch, ch] = _mirror_kernel(klen, 5.0)
    kern = torch.from_numpy(kern)

    def substrate_fn(x):
        return nn.functional.conv2d(x, kern, padding=klen // 2)

    _, _, h, w = img.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    if mode == "deletion":
        start, finish = img.clone(), torch.zeros_like(img)
    else:
        start, finish = substrate_fn(img), img.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.argsort(-sal.reshape(-1, hw), axis=1, kind="stable")
    for i in range(n_steps + 1):
        with torch.no_grad():
            pred = torch.softmax(model(start), dim=1)
        scores[i] = pred[0, target]
        if i < n_steps:
            coords = salient_order[:, step * i : step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return scores


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def _batch(n: int, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = 2 * torch.randn(n, 3, size, size, generator=g)
    saliency = torch.rand(n, size, size, generator=g)
    targets = torch.randint(0, 5, (n,), generator=g)
    return images, saliency, targets


@pytest.mark.parametrize(("mode", "step"), [("deletion", 16), ("insertion", 16), ("deletion", 20), ("insertion", 20)])
def test_equals_rise_single_run_transcribed(mode: str, step: int) -> None:
    model = _tiny_cnn()
    images, saliency, targets = _batch(3)
    out = causal_curves(model, images, saliency, targets, mode, step=step, forward_batch=10)
    for i in range(3):
        ref = _rise_single_run(model, images[i : i + 1].clone(), saliency[i].numpy(), int(targets[i]), mode, step)
        np.testing.assert_allclose(out.curves[i].numpy(), ref, rtol=1e-4, atol=1e-6)
        ref_auc = (ref.sum() - ref[0] / 2 - ref[-1] / 2) / (ref.shape[0] - 1)  # RISE's auc()
        assert out.auc[i].item() == pytest.approx(ref_auc, rel=1e-4, abs=1e-6)
    # the curve ends where it must: deletion at the all-zeros input, insertion at the image
    end = torch.zeros_like(images) if mode == "deletion" else images
    p_end = torch.softmax(model(end), dim=1).gather(1, targets[:, None])[:, 0]
    np.testing.assert_allclose(out.curves[:, -1].numpy(), p_end.detach().numpy(), rtol=1e-5)
    start = images if mode == "deletion" else blur(images)
    p_start = torch.softmax(model(start), dim=1).gather(1, targets[:, None])[:, 0]
    np.testing.assert_allclose(out.curves[:, 0].numpy(), p_start.detach().numpy(), rtol=1e-5)


def test_batch_invariance() -> None:
    model = _tiny_cnn(3)
    images, saliency, targets = _batch(5, seed=7)
    for mode in ("deletion", "insertion"):
        whole = causal_curves(model, images, saliency, targets, mode, forward_batch=1000)
        chunked = causal_curves(model, images, saliency, targets, mode, forward_batch=7)
        np.testing.assert_allclose(chunked.curves.numpy(), whole.curves.numpy(), rtol=1e-5, atol=1e-7)
        for i in (0, 3):
            one = causal_curves(model, images[i : i + 1], saliency[i : i + 1], targets[i : i + 1], mode)
            np.testing.assert_allclose(one.curves[0].numpy(), whole.curves[i].numpy(), rtol=1e-5, atol=1e-7)


def test_bad_arguments() -> None:
    images, saliency, targets = _batch(2)
    with pytest.raises(ValueError, match="mode"):
        causal_curves(_tiny_cnn(), images, saliency, targets, "both")
    with pytest.raises(ValueError, match="saliency"):
        causal_curves(_tiny_cnn(), images, saliency[:, :8], targets, "deletion")
    with pytest.raises(ValueError, match="substrate"):
        causal_curves(_tiny_cnn(), images, saliency, targets, "deletion", substrate="noise")
