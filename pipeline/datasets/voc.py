"""PASCAL VOC layout: ``<root>/Annotations/<id>.xml``, ``<root>/JPEGImages/<id>.jpg``,
``<root>/ImageSets/Main/<split>.txt`` (e.g. ``VOCdevkit/VOC2007`` with split ``test``).

Class indices follow VOC's 20 class names in alphabetical order (TorchRay's and torchvision's
order). Every object is kept, difficult ones too, with its flag: the pointing game takes the union
of a class's boxes and skips a class whose boxes are all difficult (docs/pointing_game.md, "Pairs").
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from pipeline.datasets.entry import SourceSample, image_payload, label_fields, make_key, unique_keys
from pipeline.storage import Storage

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def _text(node: ET.Element | None, path: str, default: str | None = None) -> str | None:
    found = None if node is None else node.find(path)
    return default if found is None or found.text is None else found.text.strip()


def parse_voc_xml(data: bytes, where: str = "annotation") -> dict[str, Any]:
    """A VOC annotation XML -> the sample meta (``pipeline.datasets.entry``), image size from
    ``<size>`` (None when absent). Raises ValueError on unknown class names or bad numbers."""
    try:
        root = ET.fromstring(data)
        objects = []
        for obj in root.findall("object"):
            name = _text(obj, "name")
            if name not in _INDEX:
                raise ValueError(f"unknown VOC class {name!r}")
            box = obj.find("bndbox")
            # VOC corners are 1-based and inclusive; kept as written (ints: some files write 273.0).
            corners = [int(float(_text(box, k, "nan"))) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append({"label": _INDEX[name], "name": name, "box": corners,
                            "difficult": bool(int(float(_text(obj, "difficult", "0"))))})
        size = root.find("size")
        width, height = _text(size, "width"), _text(size, "height")
        return {
            "format": "voc",
            "image": _text(root, "filename"),
            "width": None if width is None else int(float(width)),
            "height": None if height is None else int(float(height)),
            **label_fields([o["label"] for o in objects]),
            "objects": objects,
        }
    except (ET.ParseError, ValueError, TypeError) as exc:
        raise ValueError(f"bad VOC annotation {where}: {exc}") from exc


def voc_entries(
    root: str, split: str | None = None, storage: Storage = Storage()
) -> tuple[list[SourceSample], list[str]]:
    """(samples of a VOC folder (local path or fsspec URL) in id order, class names by index).

    ``split``: the ids of ``ImageSets/Main/<split>.txt``; None: every ``Annotations/*.xml``.
    """
    fs, base = storage.url_to_fs(root.rstrip("/"))
    if split is not None:
        listing = f"{base}/ImageSets/Main/{split}.txt"
        try:
            ids = [line.split()[0] for line in fs.cat_file(listing).decode().splitlines() if line.strip()]
        except FileNotFoundError:
            raise ValueError(f"VOC split {split!r} not found: {listing}") from None
    else:
        xmls = fs.glob(f"{base}/Annotations/*.xml")
        ids = sorted(p.rpartition("/")[2][: -len(".xml")] for p in xmls)
    if not ids:
        raise ValueError(f"no VOC annotations under {root} (expected Annotations/*.xml)")

    def loader(image_id: str):
        def load() -> tuple[bytes, str, dict[str, Any]]:
            xml_path = f"{base}/Annotations/{image_id}.xml"
            meta = parse_voc_xml(fs.cat_file(xml_path), xml_path)
            image_name = meta["image"] or f"{image_id}.jpg"
            meta["image"] = image_name
            suffix = image_name.rpartition(".")[2] if "." in image_name else "jpg"
            data, ext, width, height = image_payload(fs.cat_file(f"{base}/JPEGImages/{image_name}"), suffix)
            meta["width"], meta["height"] = meta["width"] or width, meta["height"] or height
            return data, ext, meta

        return load

    keys = unique_keys([make_key(i) for i in ids])
    return [SourceSample(k, loader(i)) for k, i in zip(keys, ids)], list(VOC_CLASSES)
