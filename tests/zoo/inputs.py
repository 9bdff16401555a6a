"""The same images in the three input formats, two units of two images each: WebDataset tars,
img2dataset-style Parquet files (``key``, ``jpg``, no label) and a Hugging Face ``datasets``
folder written by ``save_to_disk`` (two Arrow files; ``image``, ``label``), or the Hub's Parquet
layout (``data/train-0000i-of-00002.parquet``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.shard_factory import encode_image, synthetic_image, write_shards

NUM_UNITS, PER_UNIT = 2, 2


def _rows(unit: int, size: tuple[int, int]) -> list[dict]:
    return [{"key": f"s{unit:03d}_{i:04d}", "jpg": encode_image(synthetic_image(unit * 1000 + i, *size)),
             "label": (unit * 1000 + i) % 4} for i in range(PER_UNIT)]


def write_parquet_files(folder: str | Path, size: tuple[int, int] = (48, 40), row_group_size: int = 1) -> list[str]:
    """img2dataset's columns (plus its ``status``); a row group per row by default (streamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for unit in range(NUM_UNITS):
        rows = _rows(unit, size)
        table = pa.table({"key": [r["key"] for r in rows], "jpg": pa.array([r["jpg"] for r in rows], pa.binary()),
                          "status": ["success"] * len(rows)})
        paths.append(str(folder / f"{unit:05d}.parquet"))
        pq.write_table(table, paths[-1], row_group_size=row_group_size)
    return paths


def _dataset(size: tuple[int, int]):
    import datasets

    rows = [r for unit in range(NUM_UNITS) for r in _rows(unit, size)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": r["jpg"], "path": None} for r in rows], "label": [r["label"] for r in rows]}, features=features
    )


def write_hf_saved(folder: str | Path, size: tuple[int, int] = (48, 40)) -> str:
    """``save_to_disk`` with two Arrow files."""
    _dataset(size).save_to_disk(str(folder), num_shards=NUM_UNITS)
    return str(folder)


def write_hf_hub_parquet(folder: str | Path, size: tuple[int, int] = (48, 40)) -> str:
    """The Hub's layout: ``data/train-0000i-of-00002.parquet``."""
    ds = _dataset(size)
    (Path(folder) / "data").mkdir(parents=True, exist_ok=True)
    for i in range(NUM_UNITS):
        name = f"train-{i:05d}-of-{NUM_UNITS:05d}.parquet"
        ds.shard(NUM_UNITS, i, contiguous=True).to_parquet(str(Path(folder) / "data" / name))
    return str(folder)


def write_all_formats(folder: str | Path, size: tuple[int, int] = (48, 40)) -> dict[str, str]:
    """format -> the ``input.shards`` value for it (a glob or a folder)."""
    folder = Path(folder)
    write_shards(folder / "tars", NUM_UNITS, PER_UNIT)
    write_parquet_files(folder / "parquet", size)
    write_hf_saved(folder / "hf", size)
    return {"webdataset": str(folder / "tars" / "*.tar"), "parquet": str(folder / "parquet" / "*.parquet"),
            "hf_datasets": str(folder / "hf")}
