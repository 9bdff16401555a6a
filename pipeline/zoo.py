"""timm and Hugging Face ``transformers`` classifiers: ``model.arch: timm/<name>`` and
``model.arch: hf/<folder>``.

``timm/<name>`` builds ``timm.create_model(name, pretrained=False, **model.options)``; its
preprocessing comes from the architecture's pretrained data config (what timm's
``resolve_data_config`` / ``create_transform`` use at evaluation): input size, ``crop_pct``
(resize the shorter side to ``floor(size / crop_pct)``, centre crop ``size``), interpolation,
mean and std. ``model.weights`` asks timm for its pretrained weights (``pretrained`` for the
default tag, or a tag such as ``augreg_in21k_ft_in1k``): the only case that downloads, and only
with ``model.download_weights``.

``hf/<folder>`` loads ``AutoModelForImageClassification`` from a folder written by
``save_pretrained`` (local or any fsspec URL, copied locally first), wrapped so that it maps
images [B, 3, H, W] to logits [B, C]; preprocessing from the folder's image processor (mean,
std, resample, size). A processor that squashes to ``height`` x ``width`` becomes a
shorter-side resize and a centre crop (aspect kept, so maps go back onto the image with one
scale). ``hf/<hub id>`` (``org/name``, not a folder) downloads from the Hub when
``model.download_weights`` is on; offline that is one clear error.

Either family takes ``model.checkpoint`` on top (safetensors or a weights-only torch state_dict).
The optional packages are imported on first use (``pip install -e ".[timm]"`` / ``".[hf]"``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import math
import os
import tempfile
from typing import Any

import torch
from torch import nn

FAMILIES = ("timm/", "hf/")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's resample codes


def is_zoo_arch(arch: str | None) -> bool:
    return arch is not None and arch.startswith(FAMILIES)


def _package(name: str, extra: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise ValueError(f"model.arch needs the {name!r} package: pip install -e \".[{extra}]\"") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


def read_weights(data: io.BytesIO, what: str, torch_load) -> Any:
    """A checkpoint's tensors: safetensors when the bytes are safetensors (8-byte header length,
    then a JSON header), else ``torch_load(data, what)`` (weights-only)."""
    head = data.getbuffer()[:9].tobytes()
    if len(head) == 9 and head[8:9] == b"{":
        from safetensors.torch import load

        try:
            return load(data.getvalue())
        except Exception as e:
            raise ValueError(f"cannot read {what} as safetensors: {_one_line(e)}") from None
    return torch_load(data, what)


# ------------------------------------------------------------------------------------------------
# timm
# ------------------------------------------------------------------------------------------------


def _timm_name(arch: str) -> str:
    timm = _package("timm", "timm")
    name = arch[len("timm/") :]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f"; e.g. {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm architecture {name!r}{hint}")
    return name


def _timm_preprocess(arch: str) -> dict[str, Any]:
    cfg = _package("timm.models", "timm").get_pretrained_cfg(_timm_name(arch))
    _, height, width = cfg.input_size
    size = min(height, width)
    crop_pct = cfg.crop_pct or 1.0
    return {
        "resize": int(math.floor(size / crop_pct)),
        "crop": size,
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "interpolation": cfg.interpolation if cfg.interpolation in ("nearest", "bilinear", "bicubic") else "bilinear",
    }


def _build_timm(arch: str, options: dict[str, Any], num_classes: int | None, weights: str | None, download: bool):
    timm = _package("timm", "timm")
    name = _timm_name(arch)
    kwargs = dict(options)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    full = name if weights in (None, "pretrained") else f"{name}.{weights}"
    if weights is not None and not download:
        raise ValueError(f"timm weights {full!r} would be downloaded but model.download_weights is off; give a checkpoint")
    try:
        net = timm.create_model(full, pretrained=weights is not None, **kwargs)
    except Exception as e:
        where = " (downloading from the Hugging Face Hub: this machine may be offline)" if weights is not None else ""
        raise ValueError(f"building timm model {full!r} failed{where}: {_one_line(e)}") from None
    return net, f"timm/{full}", (f"timm:{full}" if weights is not None else None)


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------------


class HFClassifier(nn.Module):
    """A ``transformers`` image classifier as images [B, 3, H, W] -> logits [B, C]; the wrapped
    model is ``hf_model`` (checkpoints load into it, with its own key names)."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits


@functools.lru_cache(maxsize=4)
def _local_copy(url: str) -> str:
    """A remote model folder copied to a temporary folder, once per process."""
    from pipeline.storage import Storage

    fs, path = Storage().url_to_fs(url)
    if not fs.isdir(path):
        raise ValueError(f"hf model folder not found: {url}")
    local = tempfile.mkdtemp(prefix="hf-model-")
    fs.get(path.rstrip("/") + "/", local, recursive=True)
    return local


def _hf_source(arch: str, download: bool) -> tuple[str, bool]:
    """(local folder or hub id, whether it is a hub id); remote folders are copied locally once."""
    where = arch[len("hf/") :]
    if "://" in where and not where.startswith("file://"):
        return _local_copy(where), False
    local = os.path.expanduser(where.removeprefix("file://"))
    if os.path.isdir(local):
        return local, False
    if os.path.isabs(local) or local.startswith(".") or local.count("/") != 1:
        raise ValueError(f"hf model folder not found: {where}")
    if not download:
        raise ValueError(f"hf model {where!r} is not a local folder and model.download_weights is off (no Hub downloads)")
    return where, True


def _hf_load(what: str, loader, source: str, hub: bool) -> Any:
    try:
        return loader.from_pretrained(source, local_files_only=not hub)
    except Exception as e:
        where = " from the Hugging Face Hub (this machine may be offline)" if hub else ""
        raise ValueError(f"loading the {what} of hf model {source!r}{where} failed: {_one_line(e)}") from None


def _hf_preprocess(arch: str, download: bool) -> dict[str, Any]:
    transformers = _package("transformers", "hf")
    source, hub = _hf_source(arch, download)
    proc = _hf_load("image processor", transformers.AutoImageProcessor, source, hub)
    size = dict(getattr(proc, "size", None) or {})
    crop = dict(getattr(proc, "crop_size", None) or {}) if getattr(proc, "do_center_crop", False) else {}
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        crop_pct = getattr(proc, "crop_pct", None)
        if crop_pct and edge < 384:  # ConvNeXt's processor: resize edge / crop_pct, crop edge
            resize, out = int(edge / crop_pct), edge
        else:
            resize, out = edge, min(crop.values()) if crop else None
    else:
        edge = min(int(size.get("height", 224)), int(size.get("width", 224)))
        resize, out = edge, edge
    return {
        "resize": resize if getattr(proc, "do_resize", True) else None,
        "crop": out,
        "mean": tuple(getattr(proc, "image_mean", None) or (0.0, 0.0, 0.0)),
        "std": tuple(getattr(proc, "image_std", None) or (1.0, 1.0, 1.0)),
        "interpolation": _RESAMPLE.get(int(getattr(proc, "resample", 2) or 2), "bilinear"),
    }


def _folder_digest(folder: str) -> str | None:
    """sha256 over the folder's weight files (what the model is, for the config hash)."""
    files = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin")))
    if not files:
        return None
    h = hashlib.sha256()
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()}"


def _build_hf(arch: str, num_classes: int | None, download: bool):
    transformers = _package("transformers", "hf")
    source, hub = _hf_source(arch, download)
    net = _hf_load("model", transformers.AutoModelForImageClassification, source, hub)
    n = getattr(net.config, "num_labels", None)
    if num_classes is not None and n is not None and n != num_classes:
        raise ValueError(f"hf model {arch[3:]!r} has {n} classes but num_classes={num_classes}")
    net.config.return_dict = True
    where = arch[len("hf/") :]
    digest = f"hf:{source}" if hub else _folder_digest(source)
    name = f"hf/{where}" if hub else f"hf/{os.path.basename(os.path.normpath(source))}"
    return HFClassifier(net), name, digest


# ------------------------------------------------------------------------------------------------
# Entry points (pipeline.models dispatches here)
# ------------------------------------------------------------------------------------------------


def zoo_preprocess(arch: str, download: bool) -> dict[str, Any]:
    """The family's own preprocessing numbers (resize, crop, mean, std, interpolation)."""
    return _timm_preprocess(arch) if arch.startswith("timm/") else _hf_preprocess(arch, download)


def build_zoo_model(
    arch: str, options: dict[str, Any], num_classes: int | None, weights: str | None, download: bool
) -> tuple[nn.Module, str, str | None]:
    """(model, name, weights digest or None) for a ``timm/`` or ``hf/`` arch."""
    if arch.startswith("timm/"):
        return _build_timm(arch, options, num_classes, weights, download)
    if options or weights is not None:
        raise ValueError("model.options and model.weights are for timm; an hf model is its folder (or hub id)")
    return _build_hf(arch, num_classes, download)


def checkpoint_target(net: nn.Module) -> nn.Module:
    """The module a ``model.checkpoint`` loads into (the wrapped model for ``hf/``)."""
    return net.hf_model if isinstance(net, HFClassifier) else net
