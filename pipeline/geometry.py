"""Resize-and-crop bookkeeping, written once: where the model input sits in the original image.

``Geometry.of(width, height, resize, crop)`` computes it with torchvision's arithmetic (the
preprocessing uses it to resize and crop, the rows record it, the readers map maps back with it);
``Geometry.columns()`` / ``Geometry.from_row()`` are its Parquet columns (docs/parquet.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode


def crop_size(crop: int | Sequence[int]) -> tuple[int, int]:
    """``crop`` as (height, width)."""
    if isinstance(crop, int):
        return crop, crop
    c = [int(v) for v in crop]
    if len(c) == 1:
        return c[0], c[0]
    if len(c) == 2:
        return c[0], c[1]
    raise ValueError(f"crop must be an int or (height, width), got {crop!r}")


def _field(row: Any, name: str) -> Any:
    # dicts and pandas rows index by name; namedtuples (df.itertuples()) by attribute
    return getattr(row, name) if hasattr(row, "_fields") else row[name]


@dataclass(frozen=True)
class Geometry:
    """How an original image became the model input, so that input-resolution results can be
    mapped back.

    The original ``width`` x ``height`` image was resized by ``scale`` (shorter side; 1.0 when
    not resized) to ``resized_width`` x ``resized_height``, then the ``out_width`` x
    ``out_height`` input was cut from it at (``crop_left``, ``crop_top``). Offsets are negative
    when the crop was larger than the resized image (zero padding).
    """

    width: int
    height: int
    scale: float
    resized_width: int
    resized_height: int
    crop_left: int
    crop_top: int
    out_width: int
    out_height: int

    @classmethod
    def of(cls, width: int, height: int, resize: int | None, crop: int | Sequence[int] | None) -> Geometry:
        """torchvision's ``Resize(resize)`` (shorter side to ``resize``, the longer one truncated
        proportionally; None = keep) then ``CenterCrop(crop)`` (None = none; padding where the
        crop is larger) of a ``width`` x ``height`` image."""
        rw, rh, scale = width, height, 1.0
        if resize is not None:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = int(resize), int(int(resize) * long / short)
            rw, rh = (new_short, new_long) if width <= height else (new_long, new_short)
            scale = new_short / short
        if crop is None:
            return cls(width, height, scale, rw, rh, 0, 0, rw, rh)
        ch, cw = crop_size(crop)
        # torchvision's centre crop: pad symmetrically (extra pixel after) where the crop is
        # larger, else anchor at round((size - crop) / 2).
        top = -((ch - rh) // 2) if ch > rh else int(round((rh - ch) / 2.0))
        left = -((cw - rw) // 2) if cw > rw else int(round((rw - cw) / 2.0))
        return cls(width, height, scale, rw, rh, left, top, cw, ch)

    def columns(self) -> dict[str, int]:
        """The mapping-back columns of a row (``width`` and ``height`` are written apart)."""
        return {
            "resized_width": self.resized_width,
            "resized_height": self.resized_height,
            "crop_top": self.crop_top,
            "crop_left": self.crop_left,
            "map_height": self.out_height,
            "map_width": self.out_width,
        }

    @classmethod
    def from_row(cls, row: Any) -> Geometry:
        """A row's geometry (a dict, a pandas row or a namedtuple), inverse of ``columns``."""
        width, height = int(_field(row, "width")), int(_field(row, "height"))
        rw, rh = int(_field(row, "resized_width")), int(_field(row, "resized_height"))
        return cls(
            width=width,
            height=height,
            scale=min(rw, rh) / min(width, height),
            resized_width=rw,
            resized_height=rh,
            crop_left=int(_field(row, "crop_left")),
            crop_top=int(_field(row, "crop_top")),
            out_width=int(_field(row, "map_width")),
            out_height=int(_field(row, "map_height")),
        )

    def map_to_original(self, mask: np.ndarray) -> np.ndarray:
        """Map a map at the model input resolution back onto the original image.

        ``mask``: [out_height, out_width] or [M, out_height, out_width], float or uint8.
        Returns [height, width] or [M, height, width]: the map is placed at the crop's position in
        the resized frame (zeros where the crop did not reach), and that frame is resized to the
        original size (bilinear, antialiased when shrinking). uint8 in -> uint8 out (rounded),
        otherwise float32.
        """
        m = np.asarray(mask)
        squeeze = m.ndim == 2
        if squeeze:
            m = m[None]
        if m.ndim != 3 or m.shape[1:] != (self.out_height, self.out_width):
            raise ValueError(
                f"mask shape {np.shape(mask)} does not match the model input "
                f"({self.out_height}, {self.out_width})"
            )
        src = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
        frame = torch.zeros((m.shape[0], self.resized_height, self.resized_width), dtype=torch.float32)
        # Intersection of the crop window with the resized frame, in both coordinate systems.
        y0, x0 = max(self.crop_top, 0), max(self.crop_left, 0)
        y1 = min(self.crop_top + self.out_height, self.resized_height)
        x1 = min(self.crop_left + self.out_width, self.resized_width)
        if y1 > y0 and x1 > x0:
            frame[:, y0:y1, x0:x1] = src[
                :, y0 - self.crop_top : y1 - self.crop_top, x0 - self.crop_left : x1 - self.crop_left
            ]
        if (self.resized_height, self.resized_width) != (self.height, self.width):
            frame = TF.resize(
                frame, [self.height, self.width], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        out = frame.numpy()
        if m.dtype == np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out[0] if squeeze else out
