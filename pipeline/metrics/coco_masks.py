"""COCO segmentations -> boolean masks, without pycocotools: polygons, uncompressed RLE and
compressed (string) RLE, rasterised exactly as ``pycocotools.mask`` does (its ``annToMask``, which
TorchRay's pointing game uses), so the ground truth does not depend on an optional C extension.

RLE is column-major (Fortran order): runs of 0s then 1s alternating, starting with 0s, over the
``h * w`` pixels read column by column. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def decode_rle_string(s: str | bytes) -> list[int]:
    """COCO's compressed RLE counts -> run lengths: 6-bit chars offset by 48, 5 value bits and a
    continuation bit each, sign-extended; from the fourth run on, deltas to the run two back."""
    text = s.decode("ascii") if isinstance(s, bytes) else s
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle_string(counts: Sequence[int]) -> str:
    """Run lengths -> COCO's compressed string (inverse of ``decode_rle_string``)."""
    out = []
    for i, value in enumerate(counts):
        x = int(value) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C on a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Run lengths (column-major, 0s first) -> bool ``[height, width]``."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.sum() != height * width:
        raise ValueError(f"RLE covers {int(runs.sum())} pixels, the image has {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """bool ``[height, width]`` -> run lengths (column-major, 0s first)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def polygon_to_rle(xy: Sequence[float], height: int, width: int) -> list[int]:
    """One polygon ``[x0, y0, x1, y1, ...]`` -> run lengths, with pycocotools' rasteriser: the
    boundary traced on a 5x finer grid, its crossings of pixel columns rounded to pixel centres."""
    scale = 5.0
    k = len(xy) // 2
    # C's (int) cast truncates toward zero, as int() does.
    x = [int(scale * float(xy[2 * j]) + 0.5) for j in range(k)] + [0]
    y = [int(scale * float(xy[2 * j + 1]) + 0.5) for j in range(k)] + [0]
    x[k], y[k] = x[0], y[0]
    u: list[int] = []
    v: list[int] = []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u.append(t + xs)
                v.append(int(ys + s * t + 0.5))
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v.append(t + ys)
                u.append(int(xs + s * t + 0.5))
    starts: list[int] = []
    for j in range(1, len(u)):
        if u[j] == u[j - 1]:
            continue
        xd = float(u[j] if u[j] < u[j - 1] else u[j] - 1)
        xd = (xd + 0.5) / scale - 0.5
        if math.floor(xd) != xd or xd < 0 or xd > width - 1:
            continue
        yd = float(v[j] if v[j] < v[j - 1] else v[j - 1])
        yd = (yd + 0.5) / scale - 0.5
        yd = math.ceil(min(max(yd, 0.0), float(height)))
        starts.append(int(xd) * height + int(yd))
    starts.append(height * width)
    starts.sort()
    deltas, prev = [], 0
    for a in starts:
        deltas.append(a - prev)
        prev = a
    # Zero-length runs are dropped by merging the run after them into the run before.
    runs = [deltas[0]]
    j = 1
    while j < len(deltas):
        if deltas[j] > 0:
            runs.append(deltas[j])
            j += 1
        else:
            j += 1
            if j < len(deltas):
                runs[-1] += deltas[j]
                j += 1
    return runs


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` -> bool ``[height, width]``: a list of polygons (their
    union), or an RLE dict with ``counts`` as a list (uncompressed) or a string (compressed)."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        h, w = (int(v) for v in segmentation.get("size", (height, width)))
        runs = decode_rle_string(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
        mask = rle_to_mask(runs, h, w)
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {h}x{w} != image size {height}x{width}")
        return mask
    mask = np.zeros((height, width), dtype=bool)
    for polygon in segmentation or []:
        if len(polygon) >= 6:  # pycocotools needs 3 points; fewer draw nothing there either
            mask |= rle_to_mask(polygon_to_rle(polygon, height, width), height, width)
    return mask
