"""Synthetic known-answer images and the WebDataset shards that hold them.

Each image is a textured, noisy background with exactly one object whose shape and colour depend
on the class and whose position and size are random. The background is drawn independently of
the label, so a classifier trained on these images must look at the object, and a good saliency
map must land inside the object's box (which is known).
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Class index -> (shape, RGB colour in [0, 1]). Colours are saturated and the background is
# greyish, so the object is easy to find; the shape disambiguates further.
CLASSES: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("square", (0.90, 0.10, 0.10)),  # red
    ("disc", (0.10, 0.80, 0.10)),  # green
    ("triangle", (0.10, 0.20, 0.95)),  # blue
    ("cross", (0.95, 0.90, 0.10)),  # yellow
    ("ring", (0.90, 0.10, 0.90)),  # magenta
    ("diamond", (0.10, 0.90, 0.90)),  # cyan
)



@functools.lru_cache(maxsize=256)
def _shape_alpha(shape: str, side: int, supersample: int = 4) -> np.ndarray:
    """Coverage of ``shape`` in a ``side`` x ``side`` box, float32 [side, side] in [0, 1].

    Computed on a supersampled grid and averaged, so edges are anti-aliased. Cached: treat the
    result as read-only.
    """
    k = side * supersample
    t = (np.arange(k, dtype=np.float32) + 0.5) / k
    v, u = np.meshgrid(t, t, indexing="ij")  # v: rows (down), u: columns (right)
    du, dv = u - 0.5, v - 0.5
    r2 = du * du + dv * dv
    if shape == "square":
        inside = np.ones_like(u, dtype=bool)
    elif shape == "disc":
        inside = r2 <= 0.25
    elif shape == "triangle":  # apex at the top centre, base along the bottom edge
        inside = np.abs(du) <= v / 2
    elif shape == "cross":
        inside = (np.abs(du) <= 1 / 6) | (np.abs(dv) <= 1 / 6)
    elif shape == "ring":
        inside = (r2 <= 0.25) & (r2 >= 0.09)
    elif shape == "diamond":
        inside = np.abs(du) + np.abs(dv) <= 0.5
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.astype(np.float32).reshape(side, supersample, side, supersample).mean(axis=(1, 3))


def _smooth_noise(rng: np.random.Generator, n: int, grid: int, size: int) -> np.ndarray:
    """Uniform noise on a ``grid`` x ``grid`` lattice upsampled bilinearly: float32 [n, 3, size, size]."""
    coarse = torch.from_numpy(rng.random((n, 3, grid, grid), dtype=np.float32) * 2 - 1)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).numpy()


def make_synthetic_images(
    n: int, size: int = 64, num_classes: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` images, each with one class-specific object on a class-independent background.

    Returns:
        images: uint8 [n, size, size, 3] (HWC, RGB).
        labels: int64 [n], balanced over classes (each class appears n // num_classes or one more
            times) in random order.
        boxes: int64 [n, 4] as (x0, y0, x1, y1) in pixels, half-open: the object covers columns
            x0 <= x < x1 and rows y0 <= y < y1; always 0 <= x0 < x1 <= size (same for y).

    Deterministic given (n, size, num_classes, seed).
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {num_classes}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)

    # Background: a random grey level, large soft colour blobs and a finer texture, so that blurring
    # it changes the image (the perturbation must have something to remove).
    base = rng.uniform(0.35, 0.65, (n, 1, 1, 1)).astype(np.float32)
    img = base + 0.15 * _smooth_noise(rng, n, 4, size) + 0.10 * _smooth_noise(rng, n, size // 4, size)

    lo, hi = max(2, round(0.12 * size)), max(3, round(0.20 * size))
    sides = rng.integers(lo, hi + 1, n)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        s = int(sides[i])
        x0, y0 = (int(v) for v in rng.integers(0, size - s + 1, 2))
        shape, colour = CLASSES[labels[i]]
        rgb = np.clip(np.asarray(colour, np.float32) + rng.uniform(-0.08, 0.08, 3), 0, 1)
        alpha = _shape_alpha(shape, s)[None]  # [1, s, s]
        patch = img[i, :, y0 : y0 + s, x0 : x0 + s]
        img[i, :, y0 : y0 + s, x0 : x0 + s] = (1 - alpha) * patch + alpha * rgb[:, None, None]
        boxes[i] = (x0, y0, x0 + s, y0 + s)

    img += 0.04 * rng.standard_normal(img.shape, dtype=np.float32)  # pixel noise, object included
    images = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels, boxes


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file in ``path``'s folder, then rename it onto
    ``path``, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, np.ndarray, int, list[int]]]) -> None:
    """Write a WebDataset tar: per sample ``<key>.png``, ``<key>.cls``, ``<key>.json``, adjacent."""

    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, image, label, box in samples:
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                meta = {"label": label, "box": box, "width": image.shape[1], "height": image.shape[0]}
                _add_member(tar, f"{key}.png", png.getvalue())
                _add_member(tar, f"{key}.cls", str(label).encode())
                _add_member(tar, f"{key}.json", json.dumps(meta).encode())

    atomic_write(path, write)
