"""The pointing game (docs/pointing_game.md; TorchRay's ``torchray/benchmark/pointing_game.py`` protocol)
as pure functions on arrays, plus the hit/miss tally per class.

- The point of a row: its maps placed back in the resized frame (its ``Geometry``: zeros
  where the model's crop did not reach), resized to the original ``H x W`` (bilinear,
  ``align_corners=False``, no antialiasing: TorchRay's ``F.interpolate``), each smoothed as the
  method's card says (``MethodCard.smooth``, TorchRay's benchmark per method: extremal
  perturbation ``sigma = 0.09 min(H, W)``, zero padding; gradient and guided backprop
  ``sigma = 0.02 max(H, W)``, replicate padding; Grad-CAM, RISE none), summed over the maps, and
  the argmax. Ties: the first maximum in row-major order (``torch.argmax``, as TorchRay's
  ``_saliency_to_point``).
- The ``center`` baseline: the point ``(W / 2, H / 2)`` (not a pixel centre: fractional for odd sizes).
- A hit when some ground-truth pixel ``(u, v)`` has ``(u - x)^2 + (v - y)^2 < tolerance^2``
  (strict; float32, as TorchRay computes it); tolerance 15 px in original pixels.
- Accuracy per class = hits / (hits + misses); the score is the mean over the classes with at
  least one counted pair (TorchRay divides by every class of the dataset, counting an absent
  class as 0 %: the same number whenever every class occurs, as in VOC07 test and COCO14 val).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from extremal_core.methods.card import Smoothing

TOLERANCE = 15
_SQRT2 = math.sqrt(2.0)
_EPS32 = float(np.finfo(np.float32).eps)


class Geometry(Protocol):
    """Where a row's maps sit in the original image (``pipeline.geometry.Geometry`` is one): the
    original ``width`` x ``height``, the resized ``resized_width`` x ``resized_height`` and the crop
    window ``out_width`` x ``out_height`` at (``crop_left``, ``crop_top``) in it."""

    width: int
    height: int
    resized_width: int
    resized_height: int
    out_width: int
    out_height: int
    crop_left: int
    crop_top: int


def resize_to_original(maps: np.ndarray, geometry: Geometry, width: int | None = None, height: int | None = None) -> torch.Tensor:
    """Maps at the model input ``[M, h, w]`` -> float32 ``[M, H, W]`` at the original size
    (``width`` x ``height``, default the geometry's): placed in the resized frame, then resized
    bilinearly (``align_corners=False``, no antialias)."""
    m = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    if m.dim() == 2:
        m = m[None]
    g = geometry
    width, height = width or g.width, height or g.height
    if (g.crop_left, g.crop_top, g.out_width, g.out_height) == (0, 0, g.resized_width, g.resized_height):
        frame = m  # the map is the whole resized image (no crop): nothing to place
    else:
        frame = torch.zeros((m.shape[0], g.resized_height, g.resized_width), dtype=torch.float32)
        y0, x0 = max(g.crop_top, 0), max(g.crop_left, 0)
        y1, x1 = min(g.crop_top + g.out_height, g.resized_height), min(g.crop_left + g.out_width, g.resized_width)
        if y1 > y0 and x1 > x0:
            frame[:, y0:y1, x0:x1] = m[:, y0 - g.crop_top : y1 - g.crop_top, x0 - g.crop_left : x1 - g.crop_left]
    if tuple(frame.shape[1:]) == (height, width):
        return frame
    return F.interpolate(frame[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def gaussian_smooth(maps: torch.Tensor, sigma: float, padding: str = "zeros") -> torch.Tensor:
    """Separable Gaussian blur of ``[M, H, W]`` maps, same size, ``padding`` ``"zeros"`` or
    ``"replicate"``: the kernel ``exp(-i^2 / (2 sigma^2))`` for ``|i| <= ceil(4 sigma)``,
    normalised to sum 1 (float32; TorchRay's ``imsmooth``). ``sigma <= 0``: unchanged."""
    if sigma <= 0:
        return maps
    radius = math.ceil(4 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32) / (_SQRT2 * sigma + _EPS32)
    kernel = torch.exp(-taps * taps)
    kernel = kernel / kernel.sum()
    x = maps[:, None].float()
    if padding == "replicate":
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        pad_v, pad_h = (0, 0), (0, 0)
    else:
        pad_v, pad_h = (radius, 0), (0, radius)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=pad_v)  # vertical, then horizontal
    x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=pad_h)
    return x[:, 0]


def saliency_point(
    maps: np.ndarray, geometry: Geometry, smooth: Smoothing | None = None, width: int | None = None,
    height: int | None = None,
) -> tuple[int, int]:
    """(x, y) in original pixels that a row's maps ``[M, h, w]`` point at: resized to the original
    ``H x W``, each smoothed (``smooth``: the method card's; None: none), summed, first argmax."""
    return argmax_point(resize_to_original(maps, geometry, width, height), smooth)


def argmax_point(full: torch.Tensor, smooth: Smoothing | None = None) -> tuple[int, int]:
    """(x, y) of maps ``[M, H, W]`` already at the original size: each smoothed, summed, first argmax."""
    if smooth is not None and smooth.fraction > 0:
        full = gaussian_smooth(full, smooth.sigma(*full.shape[1:]), smooth.padding)
    total = full.sum(dim=0)
    index = int(torch.argmax(total.reshape(-1)))
    w = total.shape[1]
    return index % w, index // w


def center_point(width: int, height: int) -> tuple[float, float]:
    """The ``center`` baseline's point: ``(W / 2, H / 2)``."""
    return width / 2, height / 2


def is_hit(mask: np.ndarray, point: tuple[float, float], tolerance: float = TOLERANCE) -> bool:
    """Whether a ground-truth pixel of ``mask`` (bool ``[H, W]``) lies strictly within
    ``tolerance`` px of ``point`` (x, y). Only the window around the point is looked at; the
    squared distances are float32 sums, as TorchRay's ``PointingGame.evaluate`` computes them."""
    x, y = float(point[0]), float(point[1])
    h, w = mask.shape
    reach = int(math.ceil(tolerance)) + 1
    r0, r1 = max(int(math.floor(y)) - reach, 0), min(int(math.ceil(y)) + reach + 1, h)
    c0, c1 = max(int(math.floor(x)) - reach, 0), min(int(math.ceil(x)) + reach + 1, w)
    if r1 <= r0 or c1 <= c0:
        return False
    dv = (np.arange(r0, r1, dtype=np.float32) - np.float32(y)) ** 2
    du = (np.arange(c0, c1, dtype=np.float32) - np.float32(x)) ** 2
    accept = (dv[:, None] + du[None, :]) < np.float32(tolerance) ** 2
    return bool((mask[r0:r1, c0:c1] & accept).any())


@dataclass
class Tally:
    """Hits and misses per class (class index -> count); ``add`` a pair, ``merge`` another tally."""

    hits: dict[int, int] = field(default_factory=dict)
    misses: dict[int, int] = field(default_factory=dict)

    def add(self, class_id: int, hit: bool) -> None:
        counts = self.hits if hit else self.misses
        counts[int(class_id)] = counts.get(int(class_id), 0) + 1

    def merge(self, other: Tally) -> Tally:
        for mine, theirs in ((self.hits, other.hits), (self.misses, other.misses)):
            for c, n in theirs.items():
                mine[c] = mine.get(c, 0) + n
        return self

    def classes(self) -> list[int]:
        return sorted(set(self.hits) | set(self.misses))

    def class_accuracies(self) -> dict[int, float]:
        """class -> hits / (hits + misses), for the classes with a counted pair."""
        return {c: self.hits.get(c, 0) / (self.hits.get(c, 0) + self.misses.get(c, 0)) for c in self.classes()}

    def accuracy(self) -> float:
        """Mean of the per-class accuracies (NaN without any pair)."""
        acc = list(self.class_accuracies().values())
        return float(np.mean(acc)) if acc else float("nan")

    @property
    def pairs(self) -> int:
        return sum(self.hits.values()) + sum(self.misses.values())

    @classmethod
    def total(cls, tallies: Iterable[Tally]) -> Tally:
        out = cls()
        for t in tallies:
            out.merge(t)
        return out
