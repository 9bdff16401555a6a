"""One sample of a source dataset before it is packed: its WebDataset key and how to load it.

Readers list ``SourceSample``s cheaply (no image is read), so the writer can skip the samples of
shards that are already finished and load only what it writes.

The sample's ``json`` member (the ``meta`` that ``load`` returns) has one format for every layout:

- ``format``: ``voc`` | ``coco`` | ``imagefolder``; ``image``: the original file name (the
  pointing game's "difficult" flags are keyed by its stem); ``width``, ``height``: pixels.
- ``labels``: every class index present, sorted, no duplicates; ``label``: the first of them
  (also written as the ``.cls`` member, so ``targets.mode: label`` keeps working).
- ``objects``: VOC ``{"label", "name", "box": [xmin, ymin, xmax, ymax] (VOC's 1-based inclusive
  corners), "difficult"}``; COCO ``{"label", "category_id", "segmentation" (polygons or RLE, as
  in the instances file), "iscrowd", "bbox"}``; ImageFolder none.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

# Encodings the shard reader decodes as they are (pipeline.shards.IMAGE_EXTENSIONS): copied
# byte for byte; anything else PIL reads is re-encoded as PNG (lossless).
KEEP_EXTENSIONS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class SourceSample:
    """``key``: the WebDataset key (no dots); ``load()`` -> (encoded image, its extension, meta)."""

    key: str
    load: Callable[[], tuple[bytes, str, dict[str, Any]]]


def make_key(name: str) -> str:
    """A WebDataset key from a relative file name without its extension: ``/`` kept (folders),
    dots and anything but ``[A-Za-z0-9_/-]`` replaced by ``_`` (the key ends at the first dot)."""
    key = re.sub(r"[^A-Za-z0-9_/-]", "_", name).strip("/")
    return re.sub(r"/+", "/", key) or "_"


def unique_keys(keys: list[str]) -> list[str]:
    """``keys`` with repeats made distinct (``a``, ``a__1``...): two file names can sanitize to one key."""
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        n = seen.get(k, 0)
        seen[k] = n + 1
        out.append(k if n == 0 else f"{k}__{n}")
    return out


def image_payload(data: bytes, suffix: str) -> tuple[bytes, str, int, int]:
    """(bytes, extension, width, height) of an image file: kept as it is when the shard reader
    decodes that format, else re-encoded as PNG. Raises ValueError when PIL cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            ext = KEEP_EXTENSIONS.get(suffix.lower().lstrip("."))
            if ext is not None:
                return data, ext, width, height
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
            return buf.getvalue(), "png", width, height
    except Exception as exc:
        raise ValueError(f"cannot read image ({suffix}): {type(exc).__name__}: {exc}") from exc


def label_fields(labels: list[int]) -> dict[str, Any]:
    """``label`` (first class, None without any) and ``labels`` (sorted, unique) of the meta."""
    uniq = sorted({int(c) for c in labels})
    return {"label": uniq[0] if uniq else None, "labels": uniq}
