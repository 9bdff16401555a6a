"""COCO layout: a folder of images and an instances file (``annotations/instances_val2014.json``).

Images in image-id order (torchvision's ``CocoDetection``). Class indices are the categories
sorted by id (COCO's 80 classes -> 0..79, TorchRay's order). Each object keeps its segmentation as
the instances file has it (polygons, or RLE for crowds): the pointing game rasterises the union
of a class's instance masks at evaluation time (``pipeline.metrics.ground_truth``).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.datasets.entry import SourceSample, image_payload, label_fields, make_key, unique_keys
from pipeline.storage import Storage


def default_annotations(images: str) -> str:
    """COCO's own layout: ``<dir>/val2014`` -> ``<dir>/annotations/instances_val2014.json``."""
    parent, _, name = images.rstrip("/").rpartition("/")
    return f"{parent or '.'}/annotations/instances_{name}.json"


def coco_entries(
    images: str, annotations: str | None = None, storage: Storage = Storage()
) -> tuple[list[SourceSample], list[str]]:
    """(samples in image-id order, class names by index). ``annotations``: the instances JSON
    (default: ``default_annotations(images)``); it is read once, here."""
    annotations = annotations or default_annotations(images)
    afs, apath = storage.url_to_fs(annotations)
    try:
        data = json.loads(afs.cat_file(apath))
    except FileNotFoundError:
        raise ValueError(f"COCO annotations not found: {annotations} (pass --annotations)") from None
    except ValueError as exc:
        raise ValueError(f"bad COCO annotations {annotations}: {exc}") from exc
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        if ann["category_id"] not in index:
            raise ValueError(f"annotation {ann.get('id')}: unknown category_id {ann['category_id']}")
        by_image.setdefault(ann["image_id"], []).append(ann)
    imgs = sorted(data.get("images", []), key=lambda im: im["id"])
    if not imgs:
        raise ValueError(f"no images in {annotations}")
    fs, base = storage.url_to_fs(images.rstrip("/"))

    def loader(img: dict[str, Any], anns: list[dict[str, Any]]):
        def load() -> tuple[bytes, str, dict[str, Any]]:
            name = img["file_name"]
            data, ext, width, height = image_payload(fs.cat_file(f"{base}/{name}"), name.rpartition(".")[2])
            objects = [
                {"label": index[a["category_id"]], "category_id": a["category_id"], "segmentation": a.get("segmentation"),
                 "iscrowd": int(a.get("iscrowd", 0)), "bbox": a.get("bbox")}
                for a in sorted(anns, key=lambda a: a.get("id", 0))
            ]
            meta = {"format": "coco", "image": name, "id": img["id"],
                    "width": int(img.get("width") or width), "height": int(img.get("height") or height),
                    **label_fields([o["label"] for o in objects]), "objects": objects}
            return data, ext, meta

        return load

    keys = unique_keys([make_key(im["file_name"].rpartition(".")[0] or im["file_name"]) for im in imgs])
    samples = [SourceSample(k, loader(im, by_image.get(im["id"], []))) for k, im in zip(keys, imgs)]
    return samples, [c["name"] for c in categories]
