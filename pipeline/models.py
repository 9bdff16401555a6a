"""Model config -> (model, preprocessing); the checkpoints themselves are read by ``pipeline.checkpoints``.

A model is either a torchvision architecture by name (``arch``, optionally with a torchvision
weights name) or a user factory ``"package.module:function"``; either may be loaded from a
``checkpoint`` state_dict (local path or fsspec URL). Checkpoints are only ever read with
``torch.load(..., weights_only=True)``: no arbitrary objects are unpickled.

Preprocessing follows torchvision's ``ImageClassification`` preset (shorter side resize with
antialias, centre crop, scale to [0, 1], normalize), taking its numbers from the weights' preset
when there are weights, and records the geometry so that a mask at the model-input resolution can
be mapped back onto the original image.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from pipeline import benchmark_models as bench
from pipeline.checkpoints import (
    extract_state_dict,
    first_line,
    load_checked_state_dict,
    open_checkpoint,
    safe_torch_load,
    state_digest,
)
from pipeline.config import AUTO, ModelConfig, PreprocessingConfig
from pipeline.geometry import Geometry
from pipeline.zoo import build_zoo_model, checkpoint_target, is_zoo_arch, read_weights, zoo_preprocess

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_RESIZE = 256  # torchvision's classic evaluation recipe: shorter side 256, centre crop 224
IMAGENET_CROP = 224

@dataclass(frozen=True)
class Preprocess:
    """PIL image -> normalised model input, as torchvision's ``ImageClassification`` preset does:
    resize the shorter side to ``resize`` (``interpolation``, antialias; None = keep), centre crop
    ``crop`` (None = no crop; zero padding where larger than the image), scale to [0, 1], subtract
    ``mean`` and divide by ``std`` per channel.
    """

    resize: int | None
    crop: int | tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Only the image resize uses it: torchvision's EfficientNet weights, e.g., expect bicubic.
    interpolation: str = "bilinear"
    antialias: bool = True  # False: resize the [0, 1] float image, no antialias (TorchRay's Caffe models)

    def __call__(self, img: Image.Image | np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """``img``: PIL image (any mode; converted to RGB) or uint8 [H, W, 3] array.

        Returns the input float32 [3, out_height, out_width] and its ``Geometry``.
        """
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        geom = Geometry.of(img.size[0], img.size[1], self.resize, self.crop)
        size, mode = [geom.resized_height, geom.resized_width], InterpolationMode(self.interpolation)
        resize = (geom.resized_width, geom.resized_height) != img.size
        if resize and self.antialias:
            img = TF.resize(img, size, interpolation=mode, antialias=True)
        x = TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)
        if resize and not self.antialias:
            x = TF.resize(x, size, interpolation=mode, antialias=False)
        if self.crop is not None:
            x = TF.center_crop(x, [geom.out_height, geom.out_width])
        x = TF.normalize(x, mean=list(self.mean), std=list(self.std))
        return x, geom


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """``model``: eval mode, on the requested device, parameters frozen (requires_grad False: the
    attribution optimizes masks, never weights). ``preprocess``: PIL image -> (input, geometry).
    ``name``: for outputs. ``weights_digest``: what the weights are, for the config hash
    (``sha256:<hex>`` of the checkpoint's bytes as loaded; ``torchvision:<file>`` for pretrained
    weights alone; ``state:<hex>`` of the state_dict's tensors for a factory's own weights or an
    architecture's initialisation)."""

    model: nn.Module
    preprocess: Preprocess
    name: str
    weights_digest: str | None = None


def _resolve_arch(arch: str) -> str:
    names = torchvision.models.list_models()
    if arch in names:
        return arch
    close = difflib.get_close_matches(arch.lower(), names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; e.g. {', '.join(names[:5])}"
    raise ValueError(f"unknown torchvision architecture {arch!r}{hint}")


def _resolve_weights(arch: str, weights: str) -> torchvision.models.WeightsEnum:
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ValueError(f"torchvision architecture {arch!r} has no pretrained weights") from None
    valid = ["DEFAULT", *(m for m in enum.__members__ if m != "DEFAULT")]
    name = weights.strip()
    # Also accept the qualified form "ResNet50_Weights.IMAGENET1K_V2".
    if name.startswith(enum.__name__ + "."):
        name = name[len(enum.__name__) + 1 :]
    if name == "DEFAULT":
        return enum.DEFAULT
    if name in enum.__members__:
        return enum[name]
    raise ValueError(f"unknown weights {weights!r} for {arch}; valid: {', '.join(valid)}")


def _weights_preprocess(weights: torchvision.models.WeightsEnum) -> dict[str, Any]:
    """resize / crop / mean / std from the weights' transforms preset (no download: the preset is
    metadata). Attributes a preset lacks mean no resize / no crop / mean 0, std 1 (e.g. detection
    presets, whose models normalise internally)."""
    t = weights.transforms()

    def single(v: Any) -> int | None:
        if v is None:
            return None
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return int(v[0]) if len(v) == 1 else None

    return {
        "resize": single(getattr(t, "resize_size", None)),
        "crop": single(getattr(t, "crop_size", None)),
        "mean": tuple(getattr(t, "mean", (0.0, 0.0, 0.0))),
        "std": tuple(getattr(t, "std", (1.0, 1.0, 1.0))),
        "interpolation": getattr(getattr(t, "interpolation", None), "value", "bilinear"),
    }


def _resolve_factory(factory: str):
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", factory):
        raise ValueError(f"malformed factory {factory!r}; expected 'package.module:function'")
    module_name, attr = factory.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only "the module itself is missing" is the user's typo; a missing dependency inside it
        # is reported as an import failure.
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ValueError(f"factory {factory!r}: module {module_name!r} not found") from None
        raise ValueError(f"factory {factory!r}: importing {module_name!r} failed: {first_line(e)}") from None
    except Exception as e:
        raise ValueError(f"factory {factory!r}: importing {module_name!r} failed: {first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory {factory!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory {factory!r}: {attr!r} is not callable")
    return obj


def _cached_weights_file(weights: torchvision.models.WeightsEnum, download: bool) -> str:
    """Path of ``weights``' file in the torch hub cache; downloads it only if ``download``."""
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    filename = os.path.basename(urlparse(weights.url).path)
    path = os.path.join(cache_dir, filename)
    label = f"{type(weights).__name__}.{weights.name}"
    if os.path.isfile(path):
        return path
    hint = (
        f"fetch {weights.url} on a machine with network into that folder (or set TORCH_HOME), "
        "or give a checkpoint"
    )
    if not download:
        raise ValueError(
            f"pretrained weights {label} are not in the torch hub cache {cache_dir} "
            f"(this machine may be offline; downloads are off): {hint}"
        )
    os.makedirs(cache_dir, exist_ok=True)
    match = re.search(r"-([a-f0-9]*)\.", filename)  # torchvision file names embed a sha256 prefix
    try:
        torch.hub.download_url_to_file(weights.url, path, match.group(1) if match else None, progress=False)
    except Exception as e:
        raise ValueError(
            f"pretrained weights {label} are not in the torch hub cache {cache_dir} and downloading "
            f"them failed (this machine may be offline: {first_line(e)}): {hint}"
        ) from None
    return path


def _build_torchvision(arch: str, weights, checkpoint: str | None, num_classes: int | None, download: bool):
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    if weights is None or checkpoint is not None:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    n = len(weights.meta.get("categories") or [])
    if num_classes is not None and n and n != num_classes:
        raise ValueError(
            f"weights {type(weights).__name__}.{weights.name} have {n} classes but "
            f"num_classes={num_classes}; give a checkpoint for a model with a different head"
        )
    path = _cached_weights_file(weights, download)
    # Check the cached file is plain tensors before torchvision's builder reads it (it loads hub
    # files with weights_only=False). The builder is kept because it knows each architecture's
    # quirks (aux heads, image sizes) for its weights.
    extract_state_dict(safe_torch_load(path, f"cached weights {path}"), f"cached weights {path}")
    try:
        return torchvision.models.get_model(arch, weights=weights, **kwargs)
    except Exception as e:
        raise ValueError(f"building {arch} with weights {weights.name} failed: {first_line(e)}") from None


# Preprocessing when neither the spec nor torchvision weights say otherwise.
_ARCH_DEFAULTS: dict[str, Any] = {
    "resize": IMAGENET_RESIZE,
    "crop": IMAGENET_CROP,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
}
_FACTORY_DEFAULTS: dict[str, Any] = {
    "resize": None,
    "crop": None,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "interpolation": "bilinear",
}


def _build_factory(factory: str, num_classes: int | None) -> nn.Module:
    fn = _resolve_factory(factory)
    try:
        model = fn(num_classes=int(num_classes)) if num_classes is not None else fn()
    except Exception as e:
        raise ValueError(f"factory {factory!r} failed: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _make_preprocess(pp: PreprocessingConfig, defaults: dict[str, Any]) -> Preprocess:
    """The config's preprocessing, each ``auto`` filled from ``defaults``, validated."""

    def pick(attr: str) -> Any:
        v = getattr(pp, attr)
        return defaults[attr] if isinstance(v, str) and v == AUTO else v

    resize, crop = pick("resize"), pick("crop")
    mean, std = tuple(float(v) for v in pick("mean")), tuple(float(v) for v in pick("std"))
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
    interpolation = str(pick("interpolation")).lower()
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"interpolation must be nearest, bilinear or bicubic, got {interpolation!r}")
    resize, crop = None if resize is None else int(resize), None if crop is None else int(crop)
    return Preprocess(resize, crop, mean, std, interpolation, defaults.get("antialias", True))


def _check_one_source(model: ModelConfig) -> None:
    if (model.arch is None) == (model.factory is None):
        raise ValueError("model needs exactly one of 'arch' (torchvision name) or 'factory' ('module:function')")
    if model.factory is not None and model.weights is not None:
        raise ValueError("'weights' names torchvision pretrained weights and needs 'arch'; give a factory a 'checkpoint'")


def resolve_preprocess(model: ModelConfig) -> Preprocess:
    """The model's preprocessing with every ``auto`` resolved, without building the model or
    reading any weights: the weights' transforms are metadata (``IMAGENET1K_V2`` -> resize 232)."""
    _check_one_source(model)
    if model.factory is not None:
        return _make_preprocess(model.preprocessing, _FACTORY_DEFAULTS)
    if bench.is_benchmark_arch(model.arch):
        return _make_preprocess(model.preprocessing, bench.PREPROCESS)
    if is_zoo_arch(model.arch):
        return _make_preprocess(model.preprocessing, zoo_preprocess(model.arch, model.download_weights))
    arch = _resolve_arch(model.arch)
    weights = _resolve_weights(arch, model.weights) if model.weights is not None else None
    return _make_preprocess(model.preprocessing, _ARCH_DEFAULTS if weights is None else _weights_preprocess(weights))


def load_model(model: ModelConfig, device: str | torch.device = "cpu", *, download: bool | None = None) -> LoadedModel:
    """Build the model described by the job's ``model`` section, load its weights, and return it
    in eval mode on ``device`` with its ``Preprocess`` (``resolve_preprocess``).

    ``download``: allow fetching torchvision pretrained weights missing from the torch hub cache
    (default: ``model.download_weights``; errors say where the file must go).
    Raises ``ValueError`` with a one-line message for any configuration problem.
    """
    _check_one_source(model)
    download = model.download_weights if download is None else download
    preprocess = resolve_preprocess(model)
    digest = None
    if is_zoo_arch(model.arch) or bench.is_benchmark_arch(model.arch):
        net, name, digest = (bench.build_benchmark_model(model) if bench.is_benchmark_arch(model.arch) else
                             build_zoo_model(model.arch, model.options, model.num_classes, model.weights, download))
        weights = None
    elif model.arch is not None:
        arch = _resolve_arch(model.arch)
        weights = _resolve_weights(arch, model.weights) if model.weights is not None else None
        net = _build_torchvision(arch, weights, model.checkpoint, model.num_classes, download)
        name = arch if weights is None else f"{arch}.{weights.name}"
    else:
        net = _build_factory(model.factory, model.num_classes)
        name, weights = model.factory, None

    digest = digest if weights is None else f"torchvision:{os.path.basename(urlparse(weights.url).path)}"
    if model.checkpoint is not None:
        what = f"checkpoint {model.checkpoint}"
        data = open_checkpoint(str(model.checkpoint))
        digest = f"sha256:{hashlib.sha256(data.getbuffer()).hexdigest()}"
        state = extract_state_dict(read_weights(data, what, safe_torch_load), what)
        load_checked_state_dict(checkpoint_target(net), bench.fit_checkpoint(net, state), what, name)
        name = f"{name}@{Path(urlparse(str(model.checkpoint)).path).name}"
    if digest is None:
        # A factory's own weights (or an architecture's initialisation): what the model *is*, so
        # new weights behind the same factory are another config, and workers that built different
        # weights (an unseeded initialisation) are caught at their first commit.
        digest = state_digest(net)

    net = net.to(device).eval()
    net.requires_grad_(False)
    return LoadedModel(model=net, preprocess=preprocess, name=name, weights_digest=digest)
