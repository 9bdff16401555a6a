"""The report's pictures that are arrays, not plots: the drawn rows' original images (read back
from their shards), saliency overlays, and pointing-game examples, as PNG bytes.

Colours: matplotlib's ``inferno`` (perceptually uniform, dark = not salient, so a dark region
reads as "removed" and a bright one as "kept"); every overlay is drawn at the original image size,
upscaled for display when the image is small.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from pipeline.geometry import Geometry
from pipeline.io.parts import maps_at_original_size, row_maps
from pipeline.method import card_for
from pipeline.metrics.ground_truth import class_mask, image_size
from pipeline.metrics.pointing_game import TOLERANCE, is_hit, saliency_point
from pipeline.shards import ShardReadError, decode_image
from pipeline.storage import Storage
from pipeline.tables import iter_any_samples

CMAP = colormaps["inferno"]
MIN_SIDE = 160  # display size: a 64x64 demo image is upscaled so its overlay is readable
A_STAR = (0, 220, 255)  # the a* panel's frame
HIT, MISS, TRUTH = (40, 220, 80), (255, 60, 60), (60, 200, 255)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """A PIL image or uint8 ``[H, W, 3]`` array -> PNG bytes."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def load_originals(
    rows: list[dict[str, Any]], storage: Storage = Storage()
) -> dict[tuple[str, str], tuple[Image.Image, dict[str, Any]]]:
    """(shard, key) -> (RGB image, the sample's json) for the drawn rows (a key may be in two
    shards; a key repeated in one shard keeps its first sample, the one its row is of), read from their shards: one pass
    per shard that holds a drawn row, stopping once its drawn keys are found. A shard that cannot
    be read (moved, deleted) leaves its keys out: the report draws their maps on grey."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("shard"):
            wanted[r["shard"]].add(r["key"])
    found: dict[tuple[str, str], tuple[Image.Image, dict[str, Any]]] = {}
    for shard, keys in sorted(wanted.items()):
        seen: set[str] = set()
        try:
            for sample in iter_any_samples(shard, storage):
                if sample.key in keys and sample.key not in seen:
                    seen.add(sample.key)
                    if sample.image_bytes is not None and sample.error is None:
                        try:
                            found[(shard, sample.key)] = (decode_image(sample.image_bytes), sample.meta)
                        except ValueError:
                            pass
                    if keys <= seen:
                        break
        except (ShardReadError, OSError):
            continue
    return found


def _display_scale(width: int, height: int) -> int:
    return max(1, int(np.ceil(MIN_SIDE / max(1, min(width, height)))))


def base_image(row: dict[str, Any], original: Image.Image | None) -> np.ndarray:
    """The row's original image as float ``[H, W, 3]`` in [0, 1]; mid-grey when it is not available."""
    if original is not None:
        return np.asarray(original.convert("RGB"), np.float32) / 255.0
    return np.full((int(row["height"]), int(row["width"]), 3), 0.5, np.float32)


def normalise(m: np.ndarray, bounded: bool) -> np.ndarray:
    """A map -> [0, 1]: masks (``bounded``, values in [0, 1]) as they are, so maps of different
    areas compare; other methods' maps by their own min..max (their scale is arbitrary)."""
    if bounded:
        return np.clip(m, 0.0, 1.0)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def overlay(image: np.ndarray, saliency: np.ndarray, frame: tuple[int, int, int] | None = None) -> bytes:
    """``image`` float ``[H, W, 3]`` in [0, 1], ``saliency`` ``[H, W]`` in [0, 1] -> PNG of the
    colour-mapped saliency blended over the image (more weight where it is salient), upscaled for
    display, with a 3 px ``frame`` when given (the a* panel)."""
    heat = CMAP(saliency)[..., :3].astype(np.float32)
    weight = (0.3 + 0.5 * saliency)[..., None]
    out = Image.fromarray(np.clip(((1 - weight) * image + weight * heat) * 255 + 0.5, 0, 255).astype(np.uint8))
    s = _display_scale(out.width, out.height)
    if s > 1:
        out = out.resize((out.width * s, out.height * s), Image.NEAREST)
    if frame is not None:
        ImageDraw.Draw(out).rectangle([0, 0, out.width - 1, out.height - 1], outline=frame, width=3)
    return png_bytes(out)


def original_png(image: np.ndarray) -> bytes:
    """The original image, upscaled like the overlays."""
    out = Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
    s = _display_scale(out.width, out.height)
    return png_bytes(out.resize((out.width * s, out.height * s), Image.NEAREST) if s > 1 else out)


def row_overlays(row: dict[str, Any], original: Image.Image | None) -> list[bytes]:
    """One overlay PNG per map of the row (per area for extremal rows), at the original size;
    the a* area's panel is framed."""
    image = base_image(row, original)
    maps = maps_at_original_size(row)
    bounded = card_for(row["method"]).bounded
    star = star_index(row)
    return [overlay(image, normalise(m, bounded), A_STAR if i == star else None) for i, m in enumerate(maps)]


def star_index(row: dict[str, Any]) -> int | None:
    """The index of a* among the row's areas (None for rows without areas)."""
    areas, opt = row.get("areas"), row.get("optimal_area")
    if not areas or opt is None:
        return None
    return int(np.argmin([abs(float(a) - float(opt)) for a in areas]))


def summary_map(row: dict[str, Any]) -> np.ndarray:
    """One map per row for the method comparison: the mask at a* for extremal rows, the sum over
    maps otherwise (channel saliency, single-map methods), at the original size, in [0, 1]."""
    maps = maps_at_original_size(row)
    star = star_index(row)
    if star is not None and card_for(row["method"]).bounded:
        return normalise(maps[star], True)
    return normalise(maps.sum(axis=0), False)


def comparison_png(row: dict[str, Any], original: Image.Image | None) -> bytes:
    return overlay(base_image(row, original), summary_map(row))


def pointing_example(row: dict[str, Any], original: Image.Image | None, meta: dict[str, Any]) -> tuple[bytes, bool] | None:
    """The pointing game on one row, drawn: the ground truth's outline, the map's maximum (smoothed
    as the game smooths it) with the 15 px tolerance circle, green for a hit, red for a miss.
    Returns (PNG, hit) or None when the sample has no ground truth for the row's class."""
    width, height = image_size(meta, row["width"], row["height"])
    truth = class_mask(meta, int(row["target"]), width, height)
    if truth is None:
        return None
    values = row_maps(row)
    point = saliency_point(values, Geometry.from_row(row), card_for(row["method"]).smooth, width, height)
    hit = is_hit(truth, point, TOLERANCE)
    image = base_image(row, original)
    edge = truth & ~(np.roll(truth, 1, 0) & np.roll(truth, -1, 0) & np.roll(truth, 1, 1) & np.roll(truth, -1, 1))
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    pixels[edge] = TRUTH
    out = Image.fromarray(pixels)
    s = _display_scale(out.width, out.height)
    out = out.resize((out.width * s, out.height * s), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    x, y = (point[0] + 0.5) * s, (point[1] + 0.5) * s
    colour = HIT if hit else MISS
    r = TOLERANCE * s
    draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
    draw.line([x - 6, y, x + 6, y], fill=colour, width=2)
    draw.line([x, y - 6, x, y + 6], fill=colour, width=2)
    return png_bytes(out), hit


def stored_png(data: bytes | None) -> bytes | None:
    """A PNG column's bytes (the channel job's feature inversions) re-encoded upscaled for display."""
    if not data:
        return None
    img = Image.open(io.BytesIO(data)).convert("RGB")
    s = _display_scale(img.width, img.height)
    return png_bytes(img.resize((img.width * s, img.height * s), Image.NEAREST) if s > 1 else img)
