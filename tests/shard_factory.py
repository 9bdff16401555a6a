"""Real WebDataset tar shards for tests: synthetic images encoded with PIL, ``cls`` and ``json``
members, written with the standard library's tarfile (so tests control every member, including
hostile ones). Import as ``from tests.shard_factory import ...``."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def synthetic_image(seed: int, width: int = 48, height: int = 40) -> Image.Image:
    """A deterministic RGB image: a smooth gradient plus a bright square at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 96)], -1)
    s = max(4, min(width, height) // 4)
    x0, y0 = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
    img[y0 : y0 + s, x0 : x0 + s] = rng.integers(180, 256, 3)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def encode_image(img: Image.Image, fmt: str = "jpg") -> bytes:
    """PIL-encode an image; ``fmt`` is a WebDataset extension (jpg, jpeg, png, webp)."""
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def _member_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return str(value).encode()


def write_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> str:
    """Write a tar shard. Each sample maps ``__key__`` to its key and every other entry (an
    extension such as ``jpg``, ``cls``, ``json``, ``pyd``) to the member's content: bytes as-is,
    dicts/lists as JSON, anything else as ``str()``. Members of a sample are adjacent, in the
    mapping's order. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, value in sample.items():
                if ext == "__key__":
                    continue
                data = _member_bytes(value)
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def image_samples(
    shard_index: int, n: int, fmt: str = "jpg", num_classes: int = 4, size: tuple[int, int] = (48, 40)
) -> list[dict[str, Any]]:
    """``n`` ordinary samples for shard ``shard_index``: key ``s<shard>_<i>``, an image, ``cls`` and
    ``json`` (with the same label, and the index)."""
    out = []
    for i in range(n):
        seed = shard_index * 1000 + i
        label = seed % num_classes
        img = synthetic_image(seed, *size)
        out.append(
            {
                "__key__": f"s{shard_index:03d}_{i:04d}",
                fmt: encode_image(img, fmt),
                "cls": label,
                "json": {"label": label, "index": i, "shard": shard_index},
            }
        )
    return out


def write_shards(
    directory: str | os.PathLike,
    num_shards: int = 2,
    per_shard: int = 3,
    fmt: str = "jpg",
    prefix: str = "shard",
) -> list[str]:
    """``num_shards`` shards ``<directory>/<prefix>-000000.tar ...`` of ``per_shard`` samples each."""
    return [
        write_shard(Path(directory) / f"{prefix}-{s:06d}.tar", image_samples(s, per_shard, fmt))
        for s in range(num_shards)
    ]


def truncate_file(path: str | os.PathLike, keep_bytes: int) -> str:
    """Cut a file to its first ``keep_bytes`` bytes (a shard interrupted mid-upload)."""
    with open(path, "r+b") as f:
        f.truncate(keep_bytes)
    return str(path)


def member_offsets(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Member name -> (header offset, data offset) in a tar, to cut it at a precise place."""
    with tarfile.open(path, "r") as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def upload(local_path: str | os.PathLike, url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Copy a local file to any fsspec URL (e.g. ``s3://bucket/x.tar`` on the moto server)."""
    import fsspec

    with open(local_path, "rb") as src, fsspec.open(url, "wb", **dict(storage_options or {})) as dst:
        dst.write(src.read())
    return url
