"""Image bytes -> an 8-bit RGB PIL image, for any mode and bit depth Pillow decodes, within a
memory budget.

- Formats: only the allow-listed decoders run (``FORMATS``), whatever the member's extension
  says: Pillow picks a decoder from the content, and some (EPS via Ghostscript) are not safe on
  untrusted input.
- Memory: ``Image.open`` reads only the header; the size is checked against ``max_pixels``
  before any pixel is decoded (a 60 KB PNG can decode to gigabytes), and
  ``check_resize`` checks the size preprocessing would resize to (a 250,000 x 1 image resized to
  a shorter side of 256 is 16 G pixels).
- Bit depth: 16-bit images (``I;16*``) are scaled from [0, 65535], 32-bit integer images
  (``I``) likewise when their values fit 16 bits and by their own min..max otherwise, float images
  (``F``) kept when in [0, 1] and scaled by their min..max otherwise; never clipped to 255
  (Pillow's ``convert("RGB")`` clips: a 16-bit image becomes all white).
- Animated images: the first frame. Alpha is dropped (the colour channels are kept as they are).
  CMYK, YCbCr, HSV, palette and 1-bit images are converted by Pillow; LAB is refused (an error
  row: Pillow would copy its bands as RGB).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.geometry import Geometry

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_PIXELS = 50_000_000  # about 7000 x 7000; ``input.max_pixels``
_BYTES_PER_PIXEL = 4  # Pillow stores RGB, RGBA, I and F pixels in 4 bytes


def _scaled_to_unit(a: np.ndarray, mode: str) -> np.ndarray:
    """Gray values of a 16-bit, 32-bit or float image -> float64 in [0, 1] ([H, W])."""
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        return a / 65535.0
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        out = a / 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = a
    else:
        out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.where(finite, out, 0.0)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded PIL image -> 8-bit RGB, scaling deep and float gray images (not clipping)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        unit = _scaled_to_unit(np.asarray(img), mode)  # [H, W]
        return Image.fromarray(np.round(unit * 255.0).astype(np.uint8), "L").convert("RGB")
    if mode == "RGB":
        return img
    if mode == "LAB":  # Pillow's convert copies the bands as if they were RGB: wrong colours
        raise ValueError("LAB images are not supported: store them as RGB")
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB PIL image, fully (``load()``), so truncated or corrupt data
    fails here with ``ValueError("cannot decode image: ...")`` rather than later; an image over
    ``max_pixels`` fails with ``ValueError("image too large: ...")`` before it is decoded."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own limit (twice its warning size)
        raise ValueError(f"image too large: {exc}") from None
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(
                f"image too large: {w}x{h} = {w * h} pixels (decoding would allocate about "
                f"{w * h * _BYTES_PER_PIXEL / 2**20:.0f} MiB) is over input.max_pixels={max_pixels}"
            )
        try:
            img.load()
            return to_rgb(img)
        except Exception as exc:  # truncated data, DecompressionBombError, unsupported conversion...
            raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def check_resize(geometry: Geometry, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a resize whose result would be over ``max_pixels`` (ValueError), before it is made."""
    pixels = geometry.resized_width * geometry.resized_height
    if pixels > max_pixels:
        raise ValueError(
            f"image too large after resizing: {geometry.width}x{geometry.height} resized to "
            f"{geometry.resized_width}x{geometry.resized_height} = {pixels} pixels is over "
            f"input.max_pixels={max_pixels} (an extreme aspect ratio)"
        )
