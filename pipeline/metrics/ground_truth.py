"""The pointing game's ground truth of one (image, class) pair, from the sample's json
(``pipeline.datasets.entry``): a bool mask ``[H, W]`` at the original image size, or None when the
pair does not count.

- VOC (``format: voc``): the union of the class's boxes, VOC's 1-based inclusive corners turned
  into 0-based pixels ``[ymin-1, ymax-1] x [xmin-1, xmax-1]``, difficult boxes included; a class
  whose boxes are *all* difficult is skipped (TorchRay's ``PointingGameBenchmark``).
- COCO (``format: coco``): the union of the class's instance masks (``coco_masks``).
- A single ``box`` (the demo's shards: half-open ``[x0, y0, x1, y1]`` with ``label``).
A class without any object in the image is skipped too (no ground truth to point at).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .coco_masks import segmentation_mask


def image_size(meta: dict[str, Any], width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """(width, height) of the original image: the annotation's (what TorchRay sizes the ground
    truth and the resized saliency by), else the given one (the row's decoded image)."""
    w, h = meta.get("width") or width, meta.get("height") or height
    if not w or not h:
        raise ValueError("no image size in the annotations or the row")
    return int(w), int(h)


def image_name(meta: dict[str, Any], key: str) -> str:
    """The image's name as the "difficult" flag files spell it: the file name without extension
    (``000001``, ``COCO_val2014_000000000042``); the sample key's last part without one."""
    name = meta.get("image") or key.rpartition("/")[2]
    return str(name).rpartition("/")[2].split(".")[0]


def class_mask(meta: dict[str, Any], class_id: int, width: int, height: int) -> np.ndarray | None:
    """Ground truth of class ``class_id``: bool ``[height, width]``, or None when the pair is skipped
    (no object of the class; VOC: all of them difficult)."""
    fmt = meta.get("format")
    objects = [o for o in meta.get("objects") or [] if int(o.get("label", -1)) == int(class_id)]
    if fmt == "voc":
        if not objects or all(bool(o.get("difficult")) for o in objects):
            return None
        mask = np.zeros((height, width), dtype=bool)
        for o in objects:
            xmin, ymin, xmax, ymax = (int(v) for v in o["box"])
            mask[max(ymin - 1, 0) : ymax, max(xmin - 1, 0) : xmax] = True
        return mask
    if fmt == "coco":
        if not objects:
            return None
        mask = np.zeros((height, width), dtype=bool)
        for o in objects:
            mask |= segmentation_mask(o.get("segmentation"), height, width)
        return mask
    box = meta.get("box")
    if isinstance(box, (list, tuple)) and len(box) == 4 and meta.get("label") is not None and int(meta["label"]) == int(class_id):
        x0, y0, x1, y1 = (int(v) for v in box)
        mask = np.zeros((height, width), dtype=bool)
        mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
        return mask
    return None
