"""The pointing game's point per method as TorchRay's pointing-game benchmark
(``examples/attribution_benchmark.py`` of facebookresearch/TorchRay) computes it: each method's
saliency resized to the original size, then smoothed as the benchmark calls it (extremal
perturbation ``smooth=0.09``: ``imsmooth(sigma=0.09 min(H, W))``, zero padding; gradient,
deconvnet, guided backprop ``saliency(smooth=0.02)``: ``imsmooth(sigma=0.02 max(H, W),
padding_mode='replicate')``; Grad-CAM, excitation backprop, RISE: none), then the first argmax.
The methods' cards must declare exactly that."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchray.attribution.common import resize_saliency
from torchray.attribution.gradient import gradient as torchray_gradient
from torchray.utils import imsmooth

from extremal_core.methods import Smoothing
from pipeline.geometry import Geometry
from pipeline.method import card_for
from pipeline.metrics.pointing_game import saliency_point

# The benchmark's call per method: (imsmooth sigma rule, padding) or None.
BENCHMARK = {
    "extremal": (lambda h, w: 0.09 * min(h, w), "constant"),
    "gradient": (lambda h, w: 0.02 * max(h, w), "replicate"),
    "guided_backprop": (lambda h, w: 0.02 * max(h, w), "replicate"),
    "grad_cam": None,
    "rise": None,
}
LAYOUTS = [(75, 50), (50, 81), (64, 64), (120, 33), (37, 90)]  # width, height: both orientations


def _torchray_point(maps: torch.Tensor, width: int, height: int, method: str) -> tuple[int, int]:
    """maps [M, 1, h, w] at the model input -> the benchmark's point (x, y)."""
    sal = resize_saliency(None, maps, (width, height), mode="bilinear")
    rule = BENCHMARK[method]
    if rule is not None:
        sal = imsmooth(sal, sigma=rule[0](*sal.shape[2:]), padding_mode=rule[1])
    index = int(torch.argmax(sal.sum(0).view(-1)))
    return index % width, index // width


@pytest.mark.parametrize("method", sorted(BENCHMARK))
def test_each_card_reproduces_the_benchmark_point(method: str) -> None:
    rng = np.random.default_rng(7)
    smooth = card_for(method).smooth
    for width, height in LAYOUTS:
        g = Geometry.of(width, height, resize=32, crop=None)
        for _ in range(4):
            # Peaked maps near an edge: where zero and replicate padding give different argmaxes.
            coarse = torch.from_numpy(rng.random((1 if method != "extremal" else 3, 1, 6, 6), dtype=np.float32) ** 4)
            maps = torch.nn.functional.interpolate(coarse, size=(g.out_height, g.out_width), mode="bilinear")
            assert saliency_point(maps[:, 0].numpy(), g, smooth, width, height) == _torchray_point(maps, width, height, method)


def test_the_padding_and_side_matter() -> None:
    """A map peaked at the border: replicate padding keeps the peak at the border, zero padding
    pulls it inwards; the longer side's sigma is not the shorter side's."""
    g = Geometry.of(120, 40, resize=None, crop=None)
    maps = np.zeros((1, 40, 120), np.float32)
    maps[0, :, :3] = 1.0
    maps[0, 20, 60] = 3.0
    longer = saliency_point(maps, g, Smoothing(0.02, "longer", "replicate"))
    assert longer == _torchray_point(torch.from_numpy(maps)[:, None], 120, 40, "gradient")
    assert longer[0] == 0
    assert saliency_point(maps, g, Smoothing(0.02, "longer", "zeros"))[0] > 0


def test_torchray_saliency_smooth_is_the_gradient_card() -> None:
    """End to end through TorchRay's own ``gradient(resize=, smooth=0.02)`` (the benchmark's call)
    against its unsmoothed map at the input passed through the gradient card."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    for width, height in [(60, 40), (30, 52)]:
        g = Geometry.of(width, height, resize=24, crop=None)
        x = torch.randn(1, 3, g.out_height, g.out_width)
        raw = torchray_gradient(model, x, 1)
        full = torchray_gradient(model, x, 1, resize=(width, height), smooth=0.02)
        index = int(torch.argmax(full.view(-1)))
        expected = (index % width, index // width)
        assert saliency_point(raw[:, 0].numpy(), g, card_for("gradient").smooth, width, height) == expected
