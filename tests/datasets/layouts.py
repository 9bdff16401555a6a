"""Small datasets in the layouts users have, written for tests: a VOC folder (XML annotations
written here), a COCO folder (an instances JSON with polygons, uncompressed and compressed RLE)
and an ImageFolder tree. Real files on disk, nothing mocked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.shard_factory import encode_image, synthetic_image


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, list[int], bool]]) -> str:
    """A VOC annotation; ``objects``: (class name, [xmin, ymin, xmax, ymax] 1-based, difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>")


# id -> (width, height, objects): one image with two classes and a difficult box, one whose only
# "cat" box is difficult, one with one object, one left out of the split.
VOC_IMAGES: dict[str, tuple[int, int, list[tuple[str, list[int], bool]]]] = {
    "000001": (48, 40, [("dog", [5, 6, 20, 30], False), ("person", [25, 2, 40, 38], False), ("dog", [30, 30, 45, 38], True)]),
    "000002": (40, 48, [("cat", [1, 1, 10, 12], True), ("bird", [12, 20, 30, 44], False)]),
    "000003": (32, 32, [("aeroplane", [3, 3, 30, 20], False)]),
    "000004": (32, 32, [("train", [3, 3, 30, 20], False)]),
    "000005": (36, 30, [("sofa", [2, 2, 20, 20], False)]),
}
VOC_SPLIT = ["000001", "000002", "000003", "000005"]


def write_voc(root: Path, images: dict | None = None, split: list[str] | None = None) -> Path:
    """``root/VOC2007`` with Annotations, JPEGImages and ImageSets/Main/test.txt: ``images`` (id ->
    (width, height, objects), default ``VOC_IMAGES``), ``split`` (default ``VOC_SPLIT``)."""
    images = VOC_IMAGES if images is None else images
    split = VOC_SPLIT if split is None else split
    base = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i, (image_id, (w, h, objects)) in enumerate(images.items()):
        (base / "JPEGImages" / f"{image_id}.jpg").write_bytes(encode_image(synthetic_image(i, w, h), "jpg"))
        (base / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", w, h, objects))
    (base / "ImageSets/Main/test.txt").write_text("\n".join(split) + "\n")
    return base


def coco_instances() -> dict[str, Any]:
    """An instances file: 3 categories with COCO's sparse ids, 4 images (one without objects),
    a polygon, a two-part polygon, an uncompressed RLE crowd and a compressed RLE crowd."""
    return {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 40, "height": 30},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 32, "height": 24},
            {"id": 99, "file_name": "COCO_val2014_000000000099.png", "width": 20, "height": 20},
            {"id": 11, "file_name": "COCO_val2014_000000000011.jpg", "width": 16, "height": 16},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0, "bbox": [4, 5, 10, 8],
             "segmentation": [[4, 5, 14, 5, 14, 13, 4, 13]]},
            {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0, "bbox": [20, 2, 15, 20],
             "segmentation": [[20, 2, 35, 2, 27, 22], [30, 25, 38, 25, 38, 29, 30, 29]]},
            # uncompressed RLE, column-major: 0s then 1s alternating (width 32, height 24)
            {"id": 3, "image_id": 7, "category_id": 90, "iscrowd": 1, "bbox": [1, 0, 2, 24],
             "segmentation": {"size": [24, 32], "counts": [24 + 3, 10, 14 + 24 - 10, 20, 768 - 27 - 10 - 28 - 20]}},
            # compressed RLE (COCO's LEB128-like string) of a 3x4 block at rows 2..4, columns 5..8 of 20x20
            {"id": 4, "image_id": 99, "category_id": 1, "iscrowd": 1, "bbox": [5, 2, 4, 3], "segmentation": None},
        ],
    }


def write_coco(root: Path, compressed_counts: str) -> tuple[Path, Path]:
    """``root/val2014/<images>`` and ``root/annotations/instances_val2014.json``; the compressed
    RLE of annotation 4 is ``compressed_counts``. Returns (images folder, instances file)."""
    data = coco_instances()
    data["annotations"][3]["segmentation"] = {"size": [20, 20], "counts": compressed_counts}
    images = root / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(data["images"]):
        fmt = "png" if im["file_name"].endswith(".png") else "jpg"
        (images / im["file_name"]).write_bytes(encode_image(synthetic_image(100 + i, im["width"], im["height"]), fmt))
    ann = root / "annotations" / "instances_val2014.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data))
    return images, ann


def write_imagefolder(root: Path) -> dict[str, str]:
    """``root/<class>/...`` with nested folders, dotted names and a BMP; returns relative path -> class."""
    files = {"cat/a.jpg": "cat", "cat/sub/b.v2.png": "cat", "dog/c.jpeg": "dog", "dog/d.bmp": "dog", "emu/e.webp": "emu"}
    for i, (rel, _) in enumerate(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = synthetic_image(200 + i, 24, 20)
        if rel.endswith(".bmp"):
            img.save(path, format="BMP")
        else:
            path.write_bytes(encode_image(img, rel.rpartition(".")[2]))
    (root / "dog" / "notes.txt").write_text("not an image")
    return files
