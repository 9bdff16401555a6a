"""The pointing game's "difficult" subset (docs/pointing_game.md, "The difficult subset"): EBP's flag files, one row per image
(``<name>\\t0\\t1...``, one 0/1 column per class). Only flagged (image, class) pairs count; an image
missing from the file counts in both subsets (TorchRay's behaviour).

The files ship with TorchRay (``pointing_game_ebp_voc07_difficult.txt``,
``pointing_game_ebp_coco_difficult.txt``); they are read from the installed ``torchray`` package,
or from a path given by the caller. Without either the subset is not reported.
"""

from __future__ import annotations

import functools
from importlib import resources

from pipeline.storage import Storage

FLAG_FILES = {"voc": "pointing_game_ebp_voc07_difficult.txt", "coco": "pointing_game_ebp_coco_difficult.txt"}

Flags = dict[str, tuple[bool, ...]]


def parse_flags(text: str) -> Flags:
    """Flag file text -> image name -> per-class flags."""
    flags: Flags = {}
    for line in text.splitlines():
        fields = line.strip().split("\t") if "\t" in line else line.split()
        if fields:
            flags[fields[0]] = tuple(bool(int(v)) for v in fields[1:])
    return flags


@functools.lru_cache(maxsize=8)
def load_flags(fmt: str | None, path: str | None = None) -> Flags | None:
    """The flags of a dataset format (``voc``, ``coco``): from ``path`` (any fsspec URL) when
    given, else from the installed TorchRay package; None when there are none."""
    if path:
        with Storage().open(path) as f:
            return parse_flags(f.read().decode())
    name = FLAG_FILES.get(fmt or "")
    if name is None:
        return None
    try:
        return parse_flags(resources.files("torchray.benchmark").joinpath(name).read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def in_difficult_subset(flags: Flags, image_name: str, class_id: int) -> bool:
    """Whether the pair counts in the difficult subset: flagged, or the image is not in the file."""
    row = flags.get(image_name)
    return True if row is None else bool(row[class_id]) if class_id < len(row) else False
