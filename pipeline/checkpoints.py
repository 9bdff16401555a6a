"""Checkpoints: read once, refused unless weights-only, matched key by key against the model; and
the digest of a model's weights (what the output hash holds for a model without a checkpoint).

Checkpoints are only ever read with ``torch.load(..., weights_only=True)``: no arbitrary objects
are unpickled.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Any

import torch
from torch import nn


def first_line(err: BaseException) -> str:
    """An exception's first line (its type when it has no message)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def state_digest(net: nn.Module) -> str:
    """sha256 of a model's state_dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"state:{h.hexdigest()}"


def open_checkpoint(path: str) -> io.BytesIO:
    """The checkpoint's bytes, read once (what is hashed is exactly what is loaded), for
    ``torch.load``; ValueError if missing."""
    if "://" not in path or path.startswith("file://"):
        local = path[len("file://") :] if path.startswith("file://") else path
        local = os.path.expanduser(local)
        if not os.path.isfile(local):
            raise ValueError(f"checkpoint not found: {path}")
        with open(local, "rb") as f:
            return io.BytesIO(f.read())
    import fsspec  # only needed for remote checkpoints

    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.isfile(fs_path):
        raise ValueError(f"checkpoint not found: {path}")
    # torch.load needs a seekable file; read remote objects into memory once.
    with fs.open(fs_path, "rb") as f:
        return io.BytesIO(f.read())


def safe_torch_load(source: Any, what: str) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        # weights_only names the first global it refused ("Unsupported global: GLOBAL mod.Cls ...").
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise ValueError(
                f"refusing to load {what}: it pickles an arbitrary object ({found.group(1)}), not only "
                "tensors; re-save it with torch.save(model.state_dict(), path)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        reason = " ".join(detail.group(1).split()) if detail else first_line(e)
        raise ValueError(f"cannot read {what} as a weights-only torch file: {reason}") from None


def extract_state_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """Accept a state_dict, or a dict holding one under "state_dict" / "model"."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{what} is not a state_dict of tensors (top level: {keys})")
    # Strip DataParallel / DistributedDataParallel's prefix.
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_checked_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str, name: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {list(state[k].shape)} "
                f"vs model {list(own[k].shape)}; wrong num_classes?)"
            )
        raise ValueError(f"{what} does not match {name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)  # strictness checked above (num_batches_tracked aside)
