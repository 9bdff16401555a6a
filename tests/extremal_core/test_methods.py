"""The method registry and the prepared explainers: one call shape for every method, the same
masks as the functional API, and the model prepared once however many batches follow."""

import pytest
import torch

import extremal_core.methods.extremal as extremal_module
from extremal_core import (
    Explanation,
    available_methods,
    extremal_perturbation,
    make_explainer,
    register_method,
)
from extremal_core.methods import registry

FAST = dict(max_iter=3, step=4, sigma=10.0)
AREAS = (0.1, 0.3)


def images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# Each built-in method with parameters for a quick run on the tiny CNN, and the labels it gives.
METHODS = {
    "extremal": (dict(areas=AREAS, **FAST), AREAS),
    "extremal_channels": (dict(layer="3", areas=AREAS, max_iter=3), AREAS),
    "center": ({}, ("center",)),
    "gradient": ({}, ("gradient",)),
    "guided_backprop": ({}, ("guided_backprop",)),
    "grad_cam": (dict(layer="3"), ("grad_cam",)),
    "rise": (dict(num_masks=32), ("rise",)),
    "meaningful_perturbation": (dict(max_iter=2, mask_scale=4), ("deletion",)),
}


def test_every_registered_method_is_covered():
    built_in = {name for name in available_methods() if registry.get_method(name).__module__.startswith("extremal_core.")}
    assert set(METHODS) == built_in


@pytest.mark.parametrize("name", sorted(METHODS))
def test_explain_returns_maps_with_labels(tiny_cnn, name):
    params, labels = METHODS[name]
    x = images(3, 32)
    explanation = make_explainer(name, tiny_cnn, **params).explain(x, [0, 1, 2])
    assert isinstance(explanation, Explanation)
    assert explanation.maps.shape == (3, len(labels), 32, 32)
    assert explanation.maps.is_floating_point()
    assert explanation.labels == labels
    assert all(v.shape[0] == 3 for v in explanation.values.values())


def test_extremal_values_hold_the_result_rows(tiny_cnn):
    explanation = make_explainer("extremal", tiny_cnn, areas=AREAS, keep_history=True, **FAST).explain(images(), [0, 1])
    for name in ("rewards", "preserved", "scores", "achieved_areas"):
        assert explanation.values[name].shape == (2, 2)
    for name in ("phi0", "phi_min", "optimal_area", "optimal_area_reached", "seconds"):
        assert explanation.values[name].shape == (2,)
    assert explanation.values["history"].shape == (2, 2, 2, 3)


def test_extremal_explainer_gives_the_functional_masks(tiny_cnn):
    x, targets = images(3, 32), [4, 0, 2]
    kw = dict(areas=AREAS, max_iter=8, step=4, sigma=10.0)
    functional = extremal_perturbation(tiny_cnn, x, targets, **kw)
    explainer = make_explainer("extremal", tiny_cnn, **kw)
    first, second = explainer.explain(x, targets), explainer.explain(x, targets)
    assert torch.equal(first.maps, functional.masks)
    assert torch.equal(second.maps, functional.masks)  # nothing carries over between calls
    assert torch.equal(first.values["scores"], functional.scores)


def counted(monkeypatch, module, name):
    """Replace `module.name` by a wrapper that records each call; returns the record."""
    calls, original = [], getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_the_model_is_prepared_once_per_explainer(tiny_cnn, monkeypatch):
    prepared = counted(monkeypatch, extremal_module, "engine_model")
    bounded = counted(monkeypatch, extremal_module, "masks_per_batch")  # the CUDA probe's entry point
    explainer = make_explainer("extremal", tiny_cnn, areas=[0.2], **FAST)
    for seed in range(3):
        explainer.explain(images(2, 32, seed), [seed, 1])
    assert len(prepared) == 1 and len(bounded) == 1


def test_the_explainer_leaves_the_callers_model_as_found(tiny_cnn):
    tiny_cnn.train()
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    for name in ("extremal", "extremal_channels"):
        params, _ = METHODS[name]
        make_explainer(name, tiny_cnn, **params).explain(images(), [0, 1])
    assert tiny_cnn.training and all(p.requires_grad for p in tiny_cnn.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())


def test_channel_layer_without_spatial_extent_has_masks_but_no_map(tiny_cnn):
    explainer = make_explainer("extremal_channels", tiny_cnn, layer="6", areas=[0.5], max_iter=2)  # after Flatten
    assert explainer.run(images(), [0, 1]).channel_masks.shape == (2, 1, 32)
    with pytest.raises(ValueError, match="layer '6' has no spatial extent"):
        explainer.explain(images(), [0, 1])


@pytest.mark.parametrize("h,w", [(32, 32), (31, 45)])
def test_center_peaks_at_the_centre_and_is_symmetric(h, w):
    maps = make_explainer("center", None).explain(images(2, 8).new_zeros(2, 3, h, w), 0).maps
    m = maps[0, 0]
    assert torch.equal(maps[0], maps[1])
    assert torch.allclose(m, m.flip(0)) and torch.allclose(m, m.flip(1))
    peak = divmod(int(m.argmax()), w)
    assert abs(peak[0] + 0.5 - h / 2) <= 0.5 and abs(peak[1] + 0.5 - w / 2) <= 0.5
    assert m.max() <= 1 and m.min() > 0


def test_unknown_method_names_the_valid_ones(tiny_cnn):
    with pytest.raises(ValueError, match="unknown method 'extremel'; valid methods: center, extremal, extremal_channels"):
        make_explainer("extremel", tiny_cnn)


@pytest.mark.parametrize(
    "name,params,valid",
    [
        ("extremal", {"max_iters": 3}, r"valid parameters: settings, reward, areas, variant"),
        ("extremal_channels", {"layers": "3"}, r"valid parameters: layer, settings, reward"),
        ("center", {"sigma": 0.2, "radius": 3}, r"valid parameters: sigma$"),
    ],
)
def test_unknown_parameter_names_the_valid_ones(tiny_cnn, name, params, valid):
    with pytest.raises(ValueError, match=rf"unknown parameter\(s\) \[.*\] for method '{name}'; {valid}"):
        make_explainer(name, tiny_cnn, **params)


def test_a_user_can_register_a_method(tiny_cnn, monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # the toy leaves with the test

    @register_method("brightness")
    class Brightness:
        """Toy method: the mean over channels, one map, the model's logits as a value."""

        def __init__(self, model, *, scale=1.0):
            self.model, self.scale = model, scale

        def explain(self, images, targets):
            with torch.no_grad():
                logits = self.model(images)
            return Explanation(maps=self.scale * images.mean(1, keepdim=True), labels=("brightness",),
                               values={"logits": logits})

    assert "brightness" in available_methods()
    x = images(2, 16)
    explanation = make_explainer("brightness", tiny_cnn, scale=2.0).explain(x, [0, 1])
    assert torch.allclose(explanation.maps, 2 * x.mean(1, keepdim=True))
    assert explanation.values["logits"].shape == (2, 5)
    with pytest.raises(ValueError, match="valid parameters: scale"):
        make_explainer("brightness", tiny_cnn, shift=1.0)


def test_explanation_refuses_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"\[B, M, H, W\]"):
        Explanation(maps=torch.zeros(2, 8, 8), labels=("a",))
    with pytest.raises(ValueError, match="2 maps per image but 1 labels"):
        Explanation(maps=torch.zeros(1, 2, 8, 8), labels=("a",))
    with pytest.raises(ValueError, match="value 'x'"):
        Explanation(maps=torch.zeros(3, 1, 8, 8), labels=("a",), values={"x": torch.zeros(2)})
