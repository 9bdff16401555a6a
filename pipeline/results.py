"""Reading a job's results back, without Ray: the Parquet parts as one table, maps in the method's
values at the original image size. (The pointing game: ``pipeline.evaluation``.)

Needs only pyarrow, numpy, torch (for the resize) and fsspec; works on any output URI.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.commit import PARTS_DIR
from pipeline.geometry import Geometry
from pipeline.schema import restore_maps
from pipeline.storage import url_to_fs

# What every attribution part holds (``pipeline.schema``): what an evaluation of one reads.
ATTRIBUTION_COLUMNS = ("shard", "key", "target", "method", "maps", "error")


class NotAnOutputError(ValueError):
    """The folder is not an attribution output (a user's folder, another job's kind of output)."""


def check_attribution_output(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Raise NotAnOutputError (one line) unless the parts under ``uri`` have the attribution
    columns (its first part's schema is read); FileNotFoundError when there is no part."""
    urls = part_urls(uri, storage_options)
    if not urls:
        raise FileNotFoundError(f"no Parquet parts under {uri.rstrip('/')}/{PARTS_DIR}")
    fs, path = url_to_fs(urls[0], storage_options)
    with fs.open(path, "rb") as f:
        names = set(pq.ParquetFile(f).schema_arrow.names)
    missing = [c for c in ATTRIBUTION_COLUMNS if c not in names]
    if missing:
        raise NotAnOutputError(f"{uri} is not the output of an attribution job: its parts lack the columns "
                               f"{', '.join(missing)} (another job's output?)")


def refuse_unless_attribution_outputs(uris: list[str], storage_options: dict[str, Any] | None = None) -> int:
    """For the evaluation jobs: 0 when every one of ``uris`` is an attribution output, else the
    exit code after printing the one-line reason (2: the wrong kind of folder; 1: unreachable)."""
    try:
        for uri in uris:
            check_attribution_output(uri, storage_options)
    except NotAnOutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # no part yet, or the folder cannot be read (OutputError)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def part_urls(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The committed parts under ``uri`` (sorted)."""
    fs, path = url_to_fs(f"{uri.rstrip('/')}/{PARTS_DIR}", storage_options)
    fs.invalidate_cache(path)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    except FileNotFoundError:
        return []
    return [fs.unstrip_protocol(p) if "://" in uri else p for p in names]


def read_results(
    uri: str, storage_options: dict[str, Any] | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Every row of a job's output as one table (all parts, in shard-id order). ``columns``: read
    only these. Raises FileNotFoundError when there is no part yet."""
    urls = part_urls(uri, storage_options)
    if not urls:
        raise FileNotFoundError(f"no Parquet parts under {uri.rstrip('/')}/{PARTS_DIR}")
    fs, _ = url_to_fs(uri, storage_options)
    tables = []
    for url in urls:
        _, path = url_to_fs(url, storage_options)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables)


def _field(row: Any, name: str) -> Any:
    # dicts and pandas rows index by name; namedtuples (df.itertuples()) by attribute
    return getattr(row, name) if hasattr(row, "_fields") else row[name]


def row_stored_maps(row: Any) -> np.ndarray:
    """A row's maps as stored: uint8 ``[M, map_height, map_width]``, whatever the storage: a
    fixed-shape tensor (nested or flat, as pyarrow's ``to_pylist`` / pandas give it), a flat
    uint8 list, or a list of PNGs."""
    maps = _field(row, "maps")
    if maps is None:
        raise ValueError(f"row {_field(row, 'key')!r} has no maps (error: {_field(row, 'error')})")
    h, w = int(_field(row, "map_height")), int(_field(row, "map_width"))
    items = list(maps) if not isinstance(maps, np.ndarray) or maps.dtype == object else None
    if items is not None and items and isinstance(items[0], (bytes, bytearray)):
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in items])
    arr = np.asarray(maps if items is None else np.concatenate([np.asarray(m).reshape(-1) for m in items]))
    return arr.astype(np.uint8, copy=False).reshape(-1, h, w)


def row_maps(row: Any) -> np.ndarray:
    """A row's maps in the method's own values: float32 ``[M, map_height, map_width]``
    (``map_min + maps / 255 * (map_max - map_min)``)."""
    return restore_maps(row_stored_maps(row), float(_field(row, "map_min")), float(_field(row, "map_max")))


def maps_at_original_size(row: Any) -> np.ndarray:
    """A row's maps mapped back onto the original image: float32 ``[M, height, width]`` in the
    method's values (zero where the model's crop did not reach). ``row``: a dict
    (``table.to_pylist()``), a pandas row (``df.iloc[i]``) or anything indexable by column name."""
    return Geometry.from_row(row).map_to_original(row_maps(row))


def saliency_argmax(row: Any) -> tuple[int, int]:
    """(x, y) in original-image pixels of the maximum of the row's maps summed over its M maps."""
    total = maps_at_original_size(row).sum(axis=0)
    y, x = np.unravel_index(int(np.argmax(total)), total.shape)
    return int(x), int(y)
