"""ImageFolder layout (torchvision's): ``<root>/<class name>/**/<image>``; class indices are the
class folder names in sorted order. One label per image."""

from __future__ import annotations

from typing import Any

from pipeline.datasets.entry import IMAGE_SUFFIXES, SourceSample, image_payload, label_fields, make_key, unique_keys
from pipeline.storage import Storage


def imagefolder_entries(root: str, storage: Storage = Storage()) -> tuple[list[SourceSample], list[str]]:
    """(samples in (class, path) order, class names). Keys: ``<class>/<relative path without the
    extension>``, sanitized (``pipeline.datasets.entry.make_key``)."""
    fs, base = storage.url_to_fs(root.rstrip("/"))
    base = base.rstrip("/")
    classes = sorted(p.rpartition("/")[2] for p in fs.ls(base, detail=False) if fs.isdir(p))
    if not classes:
        raise ValueError(f"no class folders under {root}")
    found: list[tuple[int, str]] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in fs.find(f"{base}/{name}") if p.lower().endswith(IMAGE_SUFFIXES))
        found.extend((index, p) for p in files)
    if not found:
        raise ValueError(f"no images under {root} ({', '.join(IMAGE_SUFFIXES)})")

    def loader(index: int, path: str):
        def load() -> tuple[bytes, str, dict[str, Any]]:
            rel = path[len(base) + 1 :]
            data, ext, width, height = image_payload(fs.cat_file(path), rel.rpartition(".")[2])
            meta = {"format": "imagefolder", "image": rel, "width": width, "height": height,
                    **label_fields([index]), "class_name": classes[index], "objects": []}
            return data, ext, meta

        return load

    keys = unique_keys([make_key(p[len(base) + 1 :].rpartition(".")[0]) for _, p in found])
    return [SourceSample(k, loader(i, p)) for k, (i, p) in zip(keys, found)], classes
