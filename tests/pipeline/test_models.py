"""pipeline.models: building models from names / factories / checkpoints (offline), the safety of
checkpoint loading, and preprocessing geometry against torchvision's presets."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import _presets

from demo import build_demo_model
from pipeline.config_load import load_config
from pipeline.geometry import Geometry
from pipeline.models import Preprocess, load_model, resolve_preprocess
from tests.pipeline.conftest import model_section

DEMO_FACTORY = "demo.model:build_demo_model"


def _error(spec, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        load_model(spec, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg  # one-line errors
    return msg


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache for the test (TORCH_HOME is read on every hub call)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


# --- torchvision architectures ------------------------------------------------------------------


def test_torchvision_arch_with_random_init_loads_and_runs() -> None:
    loaded = load_model(model_section(arch="resnet18", num_classes=7))
    assert loaded.name == "resnet18"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    pre = loaded.preprocess
    assert (pre.resize, pre.crop, pre.interpolation) == (256, 224, "bilinear")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    x, geom = pre(_random_image(120, 90))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert (geom.width, geom.height, geom.out_width, geom.out_height) == (120, 90, 224, 224)
    with torch.no_grad():
        assert loaded.model(x[None]).shape == (1, 7)


def test_unknown_arch_suggests_close_names() -> None:
    msg = _error(model_section(arch="resnt18"))
    assert "unknown torchvision architecture 'resnt18'" in msg and "resnet18" in msg


def test_unknown_weights_lists_valid_names() -> None:
    msg = _error(model_section(arch="resnet18", weights="IMAGENET1K_V9"))
    assert "IMAGENET1K_V9" in msg and "IMAGENET1K_V1" in msg and "DEFAULT" in msg


def test_weights_transforms_are_metadata_available_offline() -> None:
    t = torchvision.models.get_weight("ResNet50_Weights.IMAGENET1K_V2").transforms()
    assert (t.resize_size, t.crop_size) == ([232], [224])


def test_unset_preprocessing_comes_from_the_weights_without_reading_them(torch_home: Path) -> None:
    """One model description: ResNet-50 IMAGENET1K_V2's transforms say resize 232 (not the
    classic 256), read from the weights enum's metadata; nothing is downloaded or loaded."""
    pp = resolve_preprocess(model_section(arch="resnet50", weights="IMAGENET1K_V2"))
    assert (pp.resize, pp.crop, pp.interpolation) == (232, 224, "bilinear")
    assert pp.mean == pytest.approx((0.485, 0.456, 0.406)) and pp.std == pytest.approx((0.229, 0.224, 0.225))
    assert resolve_preprocess(model_section(arch="resnet50", weights="IMAGENET1K_V1")).resize == 256
    # Set fields win; null skips a step; no weights: ImageNet's recipe, a factory: none.
    pp = resolve_preprocess(model_section(arch="resnet50", weights="IMAGENET1K_V2", resize=None, crop=200))
    assert (pp.resize, pp.crop) == (None, 200)
    plain = resolve_preprocess(model_section(arch="resnet50"))
    assert (plain.resize, plain.crop) == (256, 224)
    factory = resolve_preprocess(model_section(factory=DEMO_FACTORY))
    assert (factory.resize, factory.crop, factory.mean) == (None, None, (0.0, 0.0, 0.0))
    assert not (torch_home / "hub").exists() or not list((torch_home / "hub").rglob("*.pth"))
    # The job config says the same: unset preprocessing is `auto`.
    cfg = load_config(None, ["input.shards=x.tar", "output.uri=/tmp/o", "model.arch=resnet50", "model.weights=IMAGENET1K_V2"])
    assert resolve_preprocess(cfg.model).resize == 232


def test_weights_missing_from_hub_cache_fail_clearly(torch_home: Path) -> None:
    msg = _error(model_section(arch="resnet50", weights="IMAGENET1K_V2"))
    assert str(torch_home / "hub" / "checkpoints") in msg
    assert "offline" in msg and "ResNet50_Weights.IMAGENET1K_V2" in msg
    assert not (torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").exists()


def _hub_file(torch_home: Path, weights: str) -> Path:
    url = torchvision.models.get_weight(weights).url
    path = torch_home / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_weights_from_hub_cache_load_with_their_preprocessing(torch_home: Path) -> None:
    # Stand-in for the real file (which needs a download): a random resnet18 state_dict.
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, _hub_file(torch_home, "ResNet18_Weights.IMAGENET1K_V1"))
    loaded = load_model(model_section(arch="resnet18", weights="ResNet18_Weights.IMAGENET1K_V1"))
    assert loaded.name == "resnet18.IMAGENET1K_V1"
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert (loaded.preprocess.resize, loaded.preprocess.crop) == (256, 224)


def test_weights_only_give_preprocessing_when_a_checkpoint_is_given(tmp_path: Path, torch_home: Path) -> None:
    """A fine-tuned model: weights name for the preprocessing, checkpoint for the state (no hub
    file needed); explicit fields override the weights' values."""
    ckpt = tmp_path / "finetuned.pt"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), ckpt)
    spec = model_section(arch="resnet18", weights="IMAGENET1K_V1", checkpoint=str(ckpt), num_classes=5, crop=200)
    loaded = load_model(spec)
    assert (loaded.preprocess.resize, loaded.preprocess.crop) == (256, 200)
    assert loaded.name == "resnet18.IMAGENET1K_V1@finetuned.pt"


def test_weights_class_count_must_match(torch_home: Path) -> None:
    msg = _error(model_section(arch="resnet18", weights="DEFAULT", num_classes=10))
    assert "1000 classes" in msg and "num_classes=10" in msg


def test_cached_weights_holding_pickled_objects_are_refused(torch_home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    torch.save({"fc.weight": _Payload(marker)}, _hub_file(torch_home, "ResNet18_Weights.IMAGENET1K_V1"))
    msg = _error(model_section(arch="resnet18", weights="IMAGENET1K_V1"))
    assert "refusing" in msg and not marker.exists()


# --- factories ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, expected",
    [
        ("demo.model.build_demo_model", "malformed factory"),
        ("demo.model:", "malformed factory"),
        ("no_such_module_xyz.sub:make", "module 'no_such_module_xyz.sub' not found"),
        ("demo.model:no_such_function", "has no attribute 'no_such_function'"),
        ("demo.model:DEMO_MEAN", "is not callable"),
        ("builtins:dict", "not a torch.nn.Module"),
    ],
)
def test_factory_errors_are_clear(factory: str, expected: str) -> None:
    assert expected in _error(model_section(factory=factory))


def test_spec_needs_exactly_one_of_arch_and_factory() -> None:
    assert "exactly one" in _error(model_section())
    assert "exactly one" in _error(model_section(arch="resnet18", factory=DEMO_FACTORY))
    assert "needs 'arch'" in _error(model_section(factory=DEMO_FACTORY, weights="DEFAULT"))


def test_factory_model_defaults_to_identity_preprocessing() -> None:
    loaded = load_model(model_section(factory=DEMO_FACTORY, num_classes=3))
    assert loaded.name == DEMO_FACTORY
    assert loaded.preprocess == Preprocess(None, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x, geom = loaded.preprocess(_random_image(50, 40))
    assert x.shape == (3, 40, 50) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert geom == Geometry(50, 40, 1.0, 50, 40, 0, 0, 50, 40)
    with torch.no_grad():
        assert loaded.model(x[None]).shape == (1, 3)


# --- checkpoints ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object would create ``marker``: proves no arbitrary unpickling happens."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@dataclasses.dataclass
class _Config:
    lr: float = 0.1


def _trained_like_state(num_classes: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_demo_model(num_classes)
    for p in model.parameters():
        p.data.normal_()
    return model.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_checkpoint_round_trip(tmp_path: Path, wrap: str) -> None:
    state = _trained_like_state()
    payload = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {"lr": 0.1}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    loaded = load_model(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded.name == f"{DEMO_FACTORY}@ckpt.pt"


def test_checkpoint_from_fsspec_url(tmp_path: Path) -> None:
    state = _trained_like_state()
    with fsspec.open("memory://models/demo.pt", "wb") as f:
        torch.save(state, f)
    try:
        loaded = load_model(model_section(factory=DEMO_FACTORY, checkpoint="memory://models/demo.pt"))
        assert torch.equal(loaded.model.state_dict()["classifier.weight"], state["classifier.weight"])
        assert "not found" in _error(model_section(factory=DEMO_FACTORY, checkpoint="memory://models/nope.pt"))
    finally:
        fsspec.filesystem("memory").rm("/models", recursive=True)
    local = tmp_path / "demo.pt"
    torch.save(state, local)
    load_model(model_section(factory=DEMO_FACTORY, checkpoint=local.as_uri()))  # file:// URL


def test_missing_checkpoint(tmp_path: Path) -> None:
    msg = _error(model_section(factory=DEMO_FACTORY, checkpoint=str(tmp_path / "nope.pt")))
    assert msg == f"checkpoint not found: {tmp_path / 'nope.pt'}"


def test_checkpoint_key_mismatch_is_summarized(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    msg = _error(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))
    assert "does not match" in msg and "missing keys" in msg and "unexpected keys" in msg

    path = tmp_path / "six_classes.pt"
    torch.save(build_demo_model(6).state_dict(), path)
    msg = _error(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))
    assert "2 shape mismatches" in msg and "[6, 64]" in msg and "num_classes" in msg
    load_model(model_section(factory=DEMO_FACTORY, checkpoint=str(path), num_classes=6))


def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _trained_like_state(), "config": _Payload(marker)}, path)
    msg = _error(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))
    assert "refusing to load" in msg and "arbitrary object" in msg
    assert not marker.exists()
    # A plain object of a user class is named in the message.
    torch.save({"model": _trained_like_state(), "config": _Config()}, path)
    assert "_Config" in _error(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))


def test_checkpoint_that_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    assert "cannot read checkpoint" in _error(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))
    torch.save({"weights": [1, 2, 3]}, path)
    assert "not a state_dict" in _error(model_section(factory=DEMO_FACTORY, checkpoint=str(path)))


# --- preprocessing and geometry -------------------------------------------------------------------


@pytest.mark.parametrize("size", [(300, 200), (199, 301), (257, 256), (224, 224), (100, 60)])
def test_preprocess_matches_torchvision_preset(size: tuple[int, int]) -> None:
    img = _random_image(*size)
    ours = Preprocess(232, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    theirs = _presets.ImageClassification(crop_size=224, resize_size=232)
    x, geom = ours(img)
    assert torch.allclose(x, theirs(img), atol=1e-6)
    assert (geom.out_width, geom.out_height) == (224, 224)
    assert min(geom.resized_width, geom.resized_height) == 232


def test_preprocess_bicubic_matches_efficientnet_preset() -> None:
    img = _random_image(260, 180)
    weights = torchvision.models.get_weight("EfficientNet_B0_Weights.IMAGENET1K_V1")
    t = weights.transforms()
    ours = Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), "bicubic")
    assert torch.allclose(ours(img)[0], t(img), atol=1e-6)


def test_crop_larger_than_image_pads_like_torchvision() -> None:
    img = _random_image(100, 60)
    x, geom = Preprocess(None, (81, 120), (0.0,) * 3, (1.0,) * 3)(img)
    ref = torchvision.transforms.functional.center_crop(img, [81, 120])
    assert torch.allclose(x, torchvision.transforms.functional.to_tensor(ref), atol=1e-6)
    assert (geom.crop_left, geom.crop_top) == (-10, -10)
    back = geom.map_to_original(np.ones((81, 120), np.float32))
    assert back.shape == (60, 100) and np.allclose(back, 1.0)


def test_geometry_round_trip_on_non_square_image() -> None:
    """A bright rectangle in the original is found in the model input, and the input-resolution
    mask maps back onto the same rectangle (within a pixel or two)."""
    w, h = 320, 210
    x0, y0, x1, y1 = 140, 70, 200, 120  # half-open box, inside the central crop
    arr = np.zeros((h, w, 3), np.uint8)
    arr[y0:y1, x0:x1] = 255
    pre = Preprocess(resize=128, crop=112, mean=(0.0,) * 3, std=(1.0,) * 3)
    x, geom = pre(Image.fromarray(arr))
    assert (geom.resized_width, geom.resized_height) == (int(128 * w / h), 128)
    assert geom.scale == pytest.approx(128 / h)
    mask = (x[0].numpy() > 0.5).astype(np.float32)  # [112, 112] at input resolution
    back = geom.map_to_original(mask)
    assert back.shape == (h, w)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(xs.min() - x0) <= 2 and abs(xs.max() + 1 - x1) <= 2
    assert abs(ys.min() - y0) <= 2 and abs(ys.max() + 1 - y1) <= 2
    # A stack of masks, uint8 in -> uint8 out.
    stack = geom.map_to_original(np.stack([mask, 1 - mask]).astype(np.uint8) * 255)
    assert stack.shape == (2, h, w) and stack.dtype == np.uint8
    with pytest.raises(ValueError, match="does not match"):
        geom.map_to_original(np.zeros((10, 10)))
