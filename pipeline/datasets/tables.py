"""Parquet tables and Hugging Face ``datasets`` folders as a source for WebDataset shards
(``jobs.make_shards --from parquet | hf``), for users who prefer tars.

Listing reads only the key and label columns (Parquet); an image is read when its sample is
loaded, from the row group (Parquet) or the table (Arrow) that holds it, one cached per file, so
loading in order reads each file once.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import InputConfig
from pipeline.datasets.entry import SourceSample, image_payload, label_fields, make_key, unique_keys
from pipeline.storage import Storage
from pipeline.tables import columns, expand_units, image_bytes


def _arrow_table(raw: bytes) -> pa.Table:
    """An Arrow file's table: the IPC stream ``save_to_disk`` writes, or the IPC file format."""
    try:
        return ipc.open_stream(pa.BufferReader(raw)).read_all()
    except pa.ArrowInvalid:
        return ipc.open_file(pa.BufferReader(raw)).read_all()


class _Rows:
    """Random access to one file's image column by row number, one row group (or table) cached."""

    def __init__(self, url: str, column: str, storage: Storage) -> None:
        self.url, self.column, self.storage = url, column, storage
        self.lock = threading.Lock()
        self.cached: tuple[int, pa.Table] | None = None  # (first row, rows)

    def _table(self, row: int) -> tuple[int, pa.Table]:
        with self.storage.open(self.url, "rb") as f:
            if self.url.endswith(".arrow"):
                return 0, _arrow_table(f.read()).select([self.column])
            parquet = pq.ParquetFile(f)
            start = 0
            for group in range(parquet.num_row_groups):
                n = parquet.metadata.row_group(group).num_rows
                if row < start + n:
                    return start, parquet.read_row_group(group, columns=[self.column])
                start += n
        raise IndexError(f"row {row} is past the end of {self.url}")

    def image(self, row: int) -> Any:
        with self.lock:
            if self.cached is None or not (self.cached[0] <= row < self.cached[0] + self.cached[1].num_rows):
                self.cached = self._table(row)
            first, table = self.cached
            return table.column(self.column)[row - first].as_py()


def _listing(url: str, key_column: str | None, label_key: str, storage: Storage) -> list[tuple[str | None, int | None]]:
    """(key, label) of every row, reading only those columns."""
    with storage.open(url, "rb") as f:
        if url.endswith(".arrow"):
            table = _arrow_table(f.read())
        else:
            names = pq.ParquetFile(f).schema_arrow.names
            f.seek(0)
            table = pq.read_table(f, columns=[c for c in dict.fromkeys((key_column, label_key, "label")) if c and c in names])
    names = table.column_names
    label = next((c for c in (label_key, "label") if c in names), None)
    keys = table.column(key_column).to_pylist() if key_column and key_column in names else [None] * table.num_rows
    labels = table.column(label).to_pylist() if label else [None] * table.num_rows
    return list(zip(keys, labels))


def table_entries(
    source: str, fmt: str, image_column: str = "auto", key_column: str | None = "auto",
    label_key: str = "label", storage: Storage = Storage(),
) -> tuple[list[SourceSample], list[str]]:
    """(samples in file then row order, class names: none known). ``fmt``: ``parquet`` or
    ``hf_datasets``. Keys: the key column's value, or ``<file stem>/<row>`` without one
    (sanitized for tar member names, ``pipeline.datasets.entry.make_key``)."""
    cfg = InputConfig(shards=source, format=fmt, image_column=image_column, key_column=key_column, label_key=label_key)
    image, key_column = columns(cfg)
    found: list[tuple[_Rows, int, str, int | None]] = []
    for url in expand_units(cfg, storage):
        rows = _Rows(url, image, storage)
        stem = url.rpartition("/")[2].rpartition(".")[0]
        for i, (key, label) in enumerate(_listing(url, key_column, label_key, storage)):
            found.append((rows, i, f"{stem}/{i}" if key is None else str(key), None if label in (None, -1) else int(label)))

    def loader(rows: _Rows, index: int, name: str, label: int | None):
        def load() -> tuple[bytes, str, dict[str, Any]]:
            data, why = image_bytes(rows.image(index))
            if data is None:
                raise ValueError(f"row {index} of {rows.url}: {why}")
            with Image.open(io.BytesIO(data)) as img:
                kind = (img.format or "png").lower()
            payload, ext, width, height = image_payload(data, kind)
            meta = {"format": fmt, "image": f"{rows.url}#{index}", "key": name, "width": width, "height": height,
                    **label_fields([] if label is None else [label]), "objects": []}
            return payload, ext, meta

        return load

    keys = unique_keys([make_key(name) for _, _, name, _ in found])
    return [SourceSample(k, loader(r, i, name, lab)) for k, (r, i, name, lab) in zip(keys, found)], []
