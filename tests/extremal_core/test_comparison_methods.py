"""The paper's comparison methods (supplement 3.1-3.2) against TorchRay's implementations, on the
demo's known-answer images, and for batch invariance.

Parity models: a torchvision ResNet-18 (reused in-place ReLUs) and VGG-11 with random weights at
112², and the demo CNN. RISE is compared with the same seed on fewer masks than the default 8,000:
the masks are the same stream whatever their number, so equality on 64 masks is equality on 8,000.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchray.attribution.grad_cam import grad_cam
from torchray.attribution.gradient import gradient
from torchray.attribution.guided_backprop import guided_backprop
from torchray.attribution.rise import rise

from extremal_core import make_explainer
from extremal_core.methods.backprop import default_grad_cam_layer
from extremal_core.methods.rise import rise_masks
from tests.extremal_core.test_known_answer import pointing_hits


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def torchvision_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(num_classes=10).eval()


@pytest.fixture(scope="module", params=["resnet18", "vgg11", "demo"])
def parity_case(request):
    """(name, model, images [2, 3, S, S], targets, Grad-CAM layer, RISE masks)."""
    if request.param == "demo":
        from demo import to_model_input

        bundle = request.getfixturevalue("demo_model_and_data")
        images = to_model_input(bundle.heldout_images[:2])
        return "demo", bundle.model, images, [int(v) for v in bundle.heldout_labels[:2]], "features.11", 512
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    layer = "layer4" if request.param == "resnet18" else "features.19"
    model = torchvision_model(request.param)
    with torch.no_grad():  # the predicted class: a random network's Grad-CAM of another is often all zero
        targets = model(images).argmax(1).tolist()
    return request.param, model, images, targets, layer, 32  # one draw: the demo case checks the stream across draws


def torchray_maps(method: str, model, images, targets, layer: str, num_masks: int) -> torch.Tensor:
    """TorchRay's maps `[B, 1, H, W]`, one image at a time as its API takes them."""
    if method == "rise":
        maps = rise(model, images, num_masks=num_masks)  # all classes [B, K, H, W]
        return torch.stack([maps[i, t] for i, t in enumerate(targets)])[:, None]
    fn, kw = {"gradient": (gradient, {}), "guided_backprop": (guided_backprop, {}),
              "grad_cam": (grad_cam, {"saliency_layer": layer, "resize": True})}[method]
    return torch.cat([fn(model, images[i:i + 1].clone(), t, **kw) for i, t in enumerate(targets)]).detach()


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "grad_cam", "rise"])
def test_maps_equal_torchray(parity_case, method):
    name, model, images, targets, layer, num_masks = parity_case
    params = {"grad_cam": {"layer": layer}, "rise": {"num_masks": num_masks}}.get(method, {})
    ours = make_explainer(method, model, **params).explain(images, targets).maps
    ref = torchray_maps(method, model, images, targets, layer, num_masks)
    assert ours.shape == ref.shape == (2, 1, *images.shape[2:])
    for i in range(2):
        assert ref[i].std() > 0, f"{name}: TorchRay's {method} map {i} is flat; the comparison would be empty"
        assert correlation(ours[i], ref[i]) >= 0.99, f"{name} {method} image {i}"
        torch.testing.assert_close(ours[i], ref[i], rtol=1e-3, atol=1e-4 * float(ref[i].abs().max()))


def test_guided_backprop_leaves_the_resnet_as_it_was():
    """Captum hooks the reused in-place ReLUs of a torchvision ResNet only during the call."""
    model = torchvision_model("resnet18").train()
    x = torch.randn(1, 3, 64, 64)
    before = {n: len(m._backward_hooks) + len(m._forward_hooks) for n, m in model.named_modules()}
    make_explainer("guided_backprop", model).explain(x, [1])
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert before == {n: len(m._backward_hooks) + len(m._forward_hooks) for n, m in model.named_modules()}
    assert not x.requires_grad


def test_grad_cam_layer_defaults_and_errors(tiny_cnn):
    assert default_grad_cam_layer(torchvision.models.resnet18()) == "layer4"
    assert default_grad_cam_layer(torchvision.models.vgg11()) == "features.19"
    with pytest.raises(ValueError, match="set layer= one of: 0, 1, 2"):
        make_explainer("grad_cam", tiny_cnn)
    with pytest.raises(ValueError, match="valid layers: 0, 1, 2"):
        make_explainer("grad_cam", tiny_cnn, layer="layer9")
    with pytest.raises(ValueError, match="spatial output"):
        make_explainer("grad_cam", tiny_cnn, layer="7").explain(torch.randn(1, 3, 16, 16), [0])


def test_out_of_range_targets_are_refused(tiny_cnn):
    x = torch.randn(1, 3, 16, 16)
    for method, params in [("gradient", {}), ("rise", {"num_masks": 32}), ("meaningful_perturbation", {"max_iter": 1})]:
        with pytest.raises(ValueError, match="out of range"):
            make_explainer(method, tiny_cnn, **params).explain(x, [5])


def test_rise_masks_are_a_seeded_stream():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([rise_masks(g, 32, (40, 48), 7, 0.5, torch.device("cpu")) for _ in range(4)])

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (128, 40, 48) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.mean()) - 0.5) < 0.05  # each cell kept with probability p


BATCH_CASES = {
    "gradient": {},
    "guided_backprop": {},
    "grad_cam": {"layer": "3"},
    "rise": {"num_masks": 96, "forward_batch": 64},
    "meaningful_perturbation": {"max_iter": 12, "mask_scale": 4, "mask_blur": 1.0, "null_blur": 3.0},
}


@pytest.mark.parametrize("method", sorted(BATCH_CASES))
def test_batch_invariance(tiny_cnn, method):
    """An image's map is the same alone and in a batch (up to the network's batch-size rounding)."""
    explainer = make_explainer(method, tiny_cnn, **BATCH_CASES[method])
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    targets = [0, 3, 1]
    together = explainer.explain(x, targets).maps
    alone = torch.cat([explainer.explain(x[i:i + 1], targets[i:i + 1]).maps for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5 * float(together.abs().max()))


# Methods whose argmax points at the object (the pointing game's reading of a map).
POINTING = {
    "gradient": {},
    "guided_backprop": {},
    "grad_cam": {},
    "rise": {"num_masks": 1000},
}


@pytest.fixture(scope="module")
def known_answer(demo_model_and_data):
    from demo import to_model_input

    b, n = demo_model_and_data, 16
    return b.model, to_model_input(b.heldout_images[:n]), torch.as_tensor(b.heldout_labels[:n]), b.heldout_boxes[:n]


@pytest.mark.parametrize("method", sorted(POINTING))
def test_maps_point_at_the_object_more_often_than_the_centre(known_answer, method):
    model, images, labels, boxes = known_answer
    hits = pointing_hits(make_explainer(method, model, **POINTING[method]).explain(images, labels).maps[:, 0], boxes)
    centre = pointing_hits(make_explainer("center", model).explain(images, labels).maps[:, 0], boxes)
    assert sum(hits) >= 0.75 * len(hits) and sum(hits) > 2 * sum(centre), (sum(hits), sum(centre))


def test_meaningful_perturbation_deletes_the_object(known_answer):
    """The deletion covers the object's box and little else (demo-sized settings, as
    configs/methods/demo_meaningful_perturbation.yaml)."""
    model, images, labels, boxes = known_answer
    n = 8
    e = make_explainer("meaningful_perturbation", model, mask_scale=4, mask_blur=2.0, null_blur=5.0, l1=1e-3,
                       max_iter=150).explain(images[:n], labels[:n])
    inside, outside = [], []
    for deletion, (x0, y0, x1, y1) in zip(e.maps[:, 0], boxes[:n]):
        box = torch.zeros_like(deletion, dtype=torch.bool)
        box[y0:y1, x0:x1] = True
        inside.append(float(deletion[box].mean()))
        outside.append(float(deletion[~box].mean()))
    mean_in, mean_out = sum(inside) / n, sum(outside) / n
    assert mean_in >= 0.6 and mean_out <= 0.2 * mean_in, (inside, outside)
    with torch.no_grad():
        clean = torch.softmax(model(images[:n]), 1).gather(1, labels[:n, None]).squeeze(1)
    assert float(e.values["deleted_probability"].mean()) < 0.5 * float(clean.mean())
