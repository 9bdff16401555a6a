"""Feature inversion (docs/channels.md) on the demo CNN: a known image is reconstructed from its
activations (a measured error drop from the start), and the inversion of channel-masked
activations differs from the original's where the mask removed activation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from demo import DEMO_MEAN, DEMO_STD
from demo.model import to_model_input
from extremal_core.inversion import InversionSettings, channel_inversions, invert_activations, layer_activations
from tests.fixtures_demo import DemoBundle

LAYER = "features.5"  # the second conv block's ReLU: 16x16 activations of a 64x64 image
# The default start of 1e-3·randn leaves every ReLU of this small BatchNorm network dead at the
# first layer (zero gradient); a start at the images' scale / 10 does not. The other settings are
# the defaults; the steps are kept within the input values of black..white pixels (DEMO_MEAN/STD).
SETTINGS = InversionSettings(init_scale=0.1)
BOUNDS = (torch.tensor(-np.array(DEMO_MEAN) / np.array(DEMO_STD), dtype=torch.float32).view(1, 3, 1, 1),
          torch.tensor((1 - np.array(DEMO_MEAN)) / np.array(DEMO_STD), dtype=torch.float32).view(1, 3, 1, 1))


def _images(d: DemoBundle, n: int = 4) -> torch.Tensor:
    return to_model_input(d.heldout_images[:n])


def test_inversion_reconstructs_a_known_image_better_than_its_start(demo_model_and_data: DemoBundle) -> None:
    model, x = demo_model_and_data.model, _images(demo_model_and_data)
    module = dict(model.named_modules())[LAYER]
    with torch.no_grad():
        target = layer_activations(model, module, x)
    grads_before = [p.grad for p in model.parameters()]
    rec = invert_activations(model, LAYER, target, tuple(x.shape[1:]), SETTINGS, BOUNDS)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads_before))  # the model is untouched
    start = torch.randn((1, *x.shape[1:]), generator=torch.Generator().manual_seed(SETTINGS.seed)) * SETTINGS.init_scale
    err_start = ((start - x) ** 2).flatten(1).mean(1)
    err = ((rec - x) ** 2).flatten(1).mean(1)
    assert (err < 0.8 * err_start).all(), (err, err_start)  # measured: 0.39-0.72 of the start's error
    assert (rec >= BOUNDS[0] - 1e-6).all() and (rec <= BOUNDS[1] + 1e-6).all()
    with torch.no_grad():
        match = (layer_activations(model, module, rec) - target).flatten(1).pow(2).sum(1) / target.flatten(1).pow(2).sum(1)
    assert (match < 0.3).all(), match


def test_perturbed_inversion_differs_where_the_mask_removed_channels(demo_model_and_data: DemoBundle) -> None:
    model, x = demo_model_and_data.model, _images(demo_model_and_data)
    with torch.no_grad():
        acts = layer_activations(model, dict(model.named_modules())[LAYER], x)
    k = acts.shape[1]
    strongest = acts.mean((2, 3)).argsort(dim=1, descending=True)[:, : k // 2]
    mask = torch.ones(x.shape[0], k).scatter(1, strongest, 0.0)  # remove the most active half
    original, perturbed = channel_inversions(model, LAYER, x, mask, SETTINGS, BOUNDS)
    diff = F.adaptive_avg_pool2d((original - perturbed).abs().sum(1, keepdim=True), acts.shape[-2:]).flatten(1)
    removed = ((1 - mask)[:, :, None, None] * acts.abs()).sum(1).flatten(1)  # the channel-saliency map
    for d, r in zip(diff, removed):
        assert torch.corrcoef(torch.stack([d, r]))[0, 1] > 0.3  # measured 0.56-0.75
    assert (original - perturbed).abs().mean() > 0.3
    # a mask that keeps every channel changes nothing: same start, same activations
    same_o, same_p = channel_inversions(model, LAYER, x, torch.ones(x.shape[0], k), SETTINGS, BOUNDS)
    torch.testing.assert_close(same_o, same_p, atol=0, rtol=0)
    torch.testing.assert_close(same_o, original, atol=0, rtol=0)
