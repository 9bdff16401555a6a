"""The one reader of a job's Parquet parts, without Ray: the parts' URLs, every row as one table
(``read_results``), or a part streamed in record batches, row by row with its stored maps
(``iter_part_rows``: what every evaluation reads); a row's maps in the method's values and at the
original image size.

The ``shard`` column holds the shard's redacted URL (a signed URL's query string is a credential):
an evaluation that reopens the shards maps it back with ``ShardLocator`` over the URLs it was given.

Needs only pyarrow, numpy, torch (for the resize) and fsspec; works on any output URI.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.commit import PARTS_DIR
from pipeline.geometry import Geometry
from pipeline.schema import restore_maps
from pipeline.storage import Storage, redact_url

# What every attribution part holds (``pipeline.schema``): what an evaluation of one reads.
ATTRIBUTION_COLUMNS = ("shard", "key", "target", "method", "maps", "error")


class NotAnOutputError(ValueError):
    """The folder is not an attribution output (a user's folder, another job's kind of output)."""


def check_attribution_output(uri: str, storage: Storage = Storage()) -> None:
    """Raise NotAnOutputError (one line) unless the parts under ``uri`` have the attribution
    columns (its first part's schema is read); FileNotFoundError when there is no part."""
    urls = part_urls(uri, storage)
    if not urls:
        raise FileNotFoundError(f"no Parquet parts under {uri.rstrip('/')}/{PARTS_DIR}")
    fs, path = storage.url_to_fs(urls[0])
    with fs.open(path, "rb") as f:
        names = set(pq.ParquetFile(f).schema_arrow.names)
    missing = [c for c in ATTRIBUTION_COLUMNS if c not in names]
    if missing:
        raise NotAnOutputError(f"{uri} is not the output of an attribution job: its parts lack the columns "
                               f"{', '.join(missing)} (another job's output?)")


def part_urls(uri: str, storage: Storage = Storage()) -> list[str]:
    """The committed parts under ``uri`` (sorted)."""
    fs, path = storage.url_to_fs(f"{uri.rstrip('/')}/{PARTS_DIR}")
    fs.invalidate_cache(path)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    except FileNotFoundError:
        return []
    return [fs.unstrip_protocol(p) if "://" in uri else p for p in names]


def read_results(
    uri: str, storage: Storage = Storage(), columns: list[str] | None = None
) -> pa.Table:
    """Every row of a job's output as one table (all parts, in shard-id order). ``columns``: read
    only these. Raises FileNotFoundError when there is no part yet."""
    tables = [
        pa.Table.from_batches(list(iter_part_batches(url, storage, columns)))
        for url in output_part_urls(uri, storage)
    ]
    return pa.concat_tables(tables)


def iter_part_rows(
    part_url: str, storage: Storage = Storage(), columns: Iterable[str] | None = None,
    batch_rows: int = 32,
) -> Iterator[dict[str, Any]]:
    """The rows of one part, in order, as dicts of ``columns`` (those the part has; default all),
    streamed ``batch_rows`` at a time: memory is one record batch. With ``maps`` among the
    columns, each row has ``stored`` instead: its uint8 maps ``[M, map_height, map_width]`` (None
    for an error row), taken straight from the column's buffers."""
    for batch in iter_part_batches(part_url, storage, columns, batch_rows):
        if "maps" not in batch.schema.names:
            yield from batch.to_pylist()
            continue
        maps = _batch_maps(batch.column("maps"))
        plain = batch.drop_columns(["maps"]).to_pylist() if maps is not None else batch.to_pylist()
        for i, row in enumerate(plain):
            stored = None
            if row.get("error") is None:
                if maps is None:
                    stored = row_stored_maps(row)
                else:
                    stored = maps[i].reshape(-1, row["map_height"], row["map_width"])
            row.pop("maps", None)
            yield {**row, "stored": stored}


def iter_part_batches(
    part_url: str, storage: Storage = Storage(), columns: Iterable[str] | None = None,
    batch_rows: int = 4096, require: Iterable[str] = (),
) -> Iterator[pa.RecordBatch]:
    """One part's record batches of ``columns`` (those it has; default all), ``batch_rows`` rows
    each. ``require``: columns whose absence means the file is not the kind of part the caller
    reads (ValueError naming them)."""
    fs, path = storage.url_to_fs(part_url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in require if c not in names]
        if missing:
            raise ValueError(f"{part_url} has no column(s) {', '.join(missing)}")
        wanted = names if columns is None else [c for c in columns if c in names]
        yield from pf.iter_batches(batch_size=batch_rows, columns=wanted)


def output_part_urls(uri: str, storage: Storage = Storage()) -> list[str]:
    """``part_urls``, refusing an output without any part (FileNotFoundError)."""
    urls = part_urls(uri, storage)
    if not urls:
        raise FileNotFoundError(f"no Parquet parts under {uri.rstrip('/')}/{PARTS_DIR}")
    return urls


def _batch_maps(column: pa.Array) -> list[np.ndarray | None] | None:
    """Each row's uint8 maps straight from the column's buffers (no Python lists of pixels):
    ``[M, h, w]`` from a tensor column, flat from a ``list<uint8>`` column; None for PNGs (decoded
    per row). ``.values`` ignores a slice's offset, so the offsets below are absolute."""
    typ = column.type
    if isinstance(typ, pa.FixedShapeTensorType):
        shape = tuple(typ.shape)
        size = int(np.prod(shape))
        storage = column.storage
        flat = storage.values.to_numpy(zero_copy_only=False)[storage.offset * size : (storage.offset + len(column)) * size]
        arr = flat.reshape(len(column), *shape)
        valid = storage.is_valid().to_numpy(zero_copy_only=False)
        return [arr[i] if valid[i] else None for i in range(len(column))]
    if pa.types.is_list(typ) and pa.types.is_uint8(typ.value_type):
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(column))]
    return None


class ShardLocator:
    """The shard URL to open for a row's ``shard`` (its redacted URL): the matching URL among
    ``urls`` (e.g. the attribution config's ``input.shards``, signed afresh), else the row's own."""

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self._by_redacted = {redact_url(u): u for u in urls}

    def __call__(self, shard: str) -> str:
        return self._by_redacted.get(shard, shard)


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
