"""The gradient family on a fully convolutional score map ``[B, C, h, w]``: ``backward:
pointing`` follows TorchRay's ``get_pointing_gradient`` back, ``logit`` its default one-hot
signal (up to the scale 1/(h w)); RISE and the extremal rewards average the map."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchray.attribution.common import get_pointing_gradient
from torchray.attribution.grad_cam import grad_cam
from torchray.attribution.gradient import gradient
from torchray.attribution.guided_backprop import guided_backprop

from extremal_core import make_explainer
from extremal_core.rewards import ScoreHead


def _fully_convolutional(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3),
    ).eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("backward", ["pointing", "logit"])
def test_gradient_methods_follow_torchrays_backward_signal(backward):
    model = _fully_convolutional()
    x = torch.randn(2, 3, 20, 26)
    assert model(x).shape == (2, 5, 8, 11)
    targets = torch.tensor([1, 4])
    signal = {"get_backward_gradient": get_pointing_gradient} if backward == "pointing" else {}
    scale = 1.0 if backward == "pointing" else 1.0 / (8 * 11)  # logit: the map's mean, TorchRay's sum
    for name, reference, params in (
        ("gradient", gradient, {}),
        ("guided_backprop", guided_backprop, {}),
        ("grad_cam", grad_cam, {"layer": "3"}),
    ):
        ours = make_explainer(name, model, backward=backward, **params).explain(x, targets).maps
        for i, t in enumerate(targets.tolist()):
            kwargs = {"saliency_layer": "3", "resize": True} if name == "grad_cam" else {}
            theirs = reference(model, x[i:i + 1].clone(), t, **signal, **kwargs)
            assert _close(ours[i:i + 1], scale * theirs), (name, backward, i)


def test_score_head():
    model = _fully_convolutional()
    x = torch.randn(1, 3, 20, 26)
    y = model(x)
    assert torch.allclose(ScoreHead(model, "logit")(x), y.mean(dim=(2, 3)))
    # The pointing score's value is the softmax-weighted map; two-dimensional outputs pass.
    p = torch.softmax(y.flatten(2), dim=2)
    assert torch.allclose(ScoreHead(model, "pointing")(x), (p * y.flatten(2)).sum(2))
    flat = nn.Sequential(model, nn.Flatten(2), nn.AdaptiveMaxPool1d(1), nn.Flatten())
    assert torch.equal(ScoreHead(flat, "pointing")(x), flat(x))
    with pytest.raises(ValueError, match="backward must be one of logit, pointing"):
        make_explainer("gradient", model, backward="softmax")


def test_rise_averages_a_score_map():
    model = _fully_convolutional()
    pooled = nn.Sequential(model, nn.AdaptiveAvgPool2d(1))
    x = torch.randn(1, 3, 20, 26)
    a = make_explainer("rise", model, num_masks=16).explain(x, [2]).maps
    b = make_explainer("rise", pooled, num_masks=16).explain(x, [2]).maps
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extremal_reward_on_a_score_map_is_torchrays_simple_reward():
    """TorchRay's ``simple_reward`` takes the target's map and its optimizer averages it over the
    positions; ours averages the map (``class_scores``) and takes the target's score."""
    import torchray.attribution.extremal_perturbation as elp

    from extremal_core.optimize import variant_reward
    from extremal_core.rewards import class_scores, simple_reward

    y = torch.randn(4, 6, 2, 3)  # 4 masks (areas) of one image, a 2 x 3 score map
    theirs = elp.simple_reward(y, 5, variant=elp.PRESERVE_VARIANT).reshape(4, -1).mean(dim=1)
    ours = variant_reward(class_scores(y), torch.full((4,), 5), simple_reward, "preserve")
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)
