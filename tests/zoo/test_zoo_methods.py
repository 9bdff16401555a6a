"""Every registered method on the timm ConvNeXt, timm ViT and HF ViT (random weights, 224²),
through the engine in-process; Grad-CAM at a transformer's tokens equals a hand-computed
token-reshape Grad-CAM, and the default layer per family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extremal_core.methods import available_methods, make_explainer
from extremal_core.methods.token_cam import patch_grid
from pipeline.models import load_model
from tests.zoo.models import model_configs

timm = pytest.importorskip("timm")
pytest.importorskip("transformers")

# Few iterations / masks: the maps' shape and finiteness are under test, not their quality.
CHEAP = {
    "extremal": {"areas": [0.1], "max_iter": 3},
    "extremal_channels": {"areas": [0.1], "max_iter": 3, "layer": "stages.2"},
    "meaningful_perturbation": {"max_iter": 3},
    "rise": {"num_masks": 8},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, torch.nn.Module]:
    return {name: load_model(cfg).model for name, cfg in model_configs(tmp_path_factory.mktemp("zoo")).items()}


@pytest.mark.parametrize("family", ["timm_convnext", "timm_vit", "hf_vit"])
def test_every_method_on_every_family(family, models):
    """Maps [B, A, 224, 224], finite; guided backprop refused in one line (no ReLU in these
    families), channel masks refused at a ViT (its layers have no channels-first map)."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3])
    for method in available_methods():
        params = dict(CHEAP.get(method, {}))
        if method == "guided_backprop":
            with pytest.raises(ValueError, match="the model has none") as err:
                make_explainer(method, models[family])
            assert "\n" not in str(err.value)
            continue
        if method == "extremal_channels" and family != "timm_convnext":
            continue
        maps = make_explainer(method, models[family], **params).explain(images, targets).maps
        assert maps.shape[0] == 2 and maps.shape[2:] == (224, 224), (family, method)
        assert torch.isfinite(maps).all(), (family, method)


def _hand_grad_cam(model, layer, images, targets, prefix):
    """Grad-CAM written out for a ViT: the layer's tokens [B, 1 + 14*14, D] minus the class
    token, as a 14 x 14 grid; weights = gradients averaged over the grid."""
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    score = model(images).gather(1, targets[:, None]).sum()
    handle.remove()
    (g,) = torch.autograd.grad(score, saved["a"])
    a, g = saved["a"][:, prefix:], g[:, prefix:]
    b, n, d = a.shape
    a, g = a.reshape(b, 14, 14, d), g.reshape(b, 14, 14, d)
    weights = g.mean(dim=(1, 2))  # [B, D]
    cam = F.relu(torch.einsum("bhwd,bd->bhw", a, weights))[:, None]
    return F.interpolate(cam, size=(224, 224), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("family,layer", [("timm_vit", "blocks.1.norm1"), ("hf_vit", "hf_model.vit.layers.1.layernorm_before")])
def test_vit_grad_cam_equals_hand_computed(family, layer, models):
    model = models[family]
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 4])
    explainer = make_explainer("grad_cam", model)
    assert explainer.layer == layer  # the default: the last block's first norm
    got = explainer.explain(images, targets).maps
    module = dict(model.named_modules())[layer]
    with torch.enable_grad():
        want = _hand_grad_cam(model, module, images.requires_grad_(True), targets, prefix=1)
    assert want.amax() > 0
    want = want.detach()
    torch.testing.assert_close(got, want, atol=1e-6 * float(want.abs().max()), rtol=1e-4)


def test_patch_grid_drops_prefix_tokens_and_keeps_row_major_order():
    grid = torch.arange(6 * 4, dtype=torch.float32).reshape(1, 6, 4, 1)  # [B, h, w, D]
    tokens = torch.cat([torch.full((1, 5, 1), -1.0), grid.reshape(1, 24, 1)], dim=1)  # class + 4 registers first
    out = patch_grid(tokens, (60, 40))  # prefix inferred from the 3:2 image
    torch.testing.assert_close(out, grid.permute(0, 3, 1, 2))
    torch.testing.assert_close(patch_grid(tokens, (60, 40), prefix=5), out)
    torch.testing.assert_close(patch_grid(grid, (60, 40)), grid.permute(0, 3, 1, 2))  # Swin: channels last
    with pytest.raises(ValueError, match="cannot lay 7 tokens"):
        patch_grid(torch.zeros(1, 7, 2), (10, 10), prefix=0)


@pytest.mark.parametrize("name,options,layer", [
    ("swin_tiny_patch4_window7_224", {"depths": (1,) * 4, "embed_dim": 16, "num_heads": (1,) * 4}, "layers.3.blocks.0.norm1"),
    ("deit_tiny_distilled_patch16_224", {"depth": 1, "embed_dim": 32, "num_heads": 2}, "blocks.0.norm1"),
    ("efficientnet_b0", {}, "blocks.6"),
])
def test_grad_cam_default_layer_per_family(name, options, layer):
    """Swin's tokens are channels-last maps, DeiT has a distillation token after the class token,
    EfficientNet's last block group is a feature map."""
    model = timm.create_model(name, pretrained=False, num_classes=5, **options).eval()
    explainer = make_explainer("grad_cam", model)
    assert explainer.layer == layer
    maps = explainer.explain(torch.randn(1, 3, 224, 224), torch.tensor([2])).maps
    assert maps.shape == (1, 1, 224, 224) and torch.isfinite(maps).all()
