"""Inputs beyond WebDataset tars: Parquet tables (img2dataset's ``parquet`` output, LAION-style
tables) and Hugging Face ``datasets`` folders, read as units of work like shards.

``input.format``:

- ``webdataset``: tar shards (``pipeline.shards``).
- ``parquet``: ``input.shards`` names Parquet files (fsspec globs, brace patterns, lists); each
  file is a unit of work. A row is a sample: image bytes in ``input.image_column`` (default
  ``jpg``, img2dataset's), its key in ``input.key_column`` (default ``key``), a class index in the
  column ``input.label_key`` or ``label`` when the table has one.
- ``hf_datasets``: ``input.shards`` names folders written by ``Dataset.save_to_disk`` (Arrow
  files) or laid out as on the Hub (Parquet files, e.g. ``data/train-00000-of-00004.parquet``);
  each Arrow / Parquet file is a unit of work. Features ``image`` (``{bytes, path}``) and
  ``label``; with no ``input.key_column`` a row's key is its position in its file (``0``, ``1``...),
  which DuckDB's ``read_parquet(..., file_row_number = true)`` reproduces for a join.

Reading streams record batches (Parquet: one row group at a time, only the needed columns), so
memory stays flat in the file's size. A row that cannot be used (no image bytes, no key, a
repeated key, a bad label) becomes an error row naming its key; a file that cannot be read, or
lacks the image / key column, fails as a shard does (``ShardReadError``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.shards import Sample, ShardReadError, expand_shards, iter_samples
from pipeline.storage import Storage, redact_url, scrub

FORMATS = ("webdataset", "parquet", "hf_datasets")
_DEFAULT_IMAGE = {"parquet": "jpg", "hf_datasets": "image"}
_DEFAULT_KEY = {"parquet": "key", "hf_datasets": None}
BATCH_ROWS = 64  # rows per record batch read: a few MB of images at a time


def columns(cfg: InputConfig) -> tuple[str, str | None]:
    """(image column, key column or None for row numbers) of a table format."""
    image = cfg.image_column if cfg.image_column != "auto" else _DEFAULT_IMAGE[cfg.format]
    key = cfg.key_column if cfg.key_column != "auto" else _DEFAULT_KEY[cfg.format]
    return image, key


def sample_reader(cfg: InputConfig, reads_labels: bool = True) -> Callable[[str, Storage], Iterator[Sample]]:
    """``reader(url, storage)`` -> the unit's samples, for the configured format.
    ``reads_labels`` False: labels are not read (a job explaining the model's predictions)."""
    label_key = cfg.label_key if reads_labels else None
    if cfg.format == "webdataset":
        return lambda url, storage: iter_samples(url, storage, label_key)
    image, key = columns(cfg)
    return lambda url, storage: iter_table_samples(url, storage, image, key, label_key)


def iter_any_samples(url: str, storage: Storage = Storage()) -> Iterator[Sample]:
    """A unit's samples without its job's config (the report drawing originals): tables by their
    suffix, with the first image column of ``jpg``, ``image``, ``png``, ``webp`` and ``key`` when
    present (else row numbers); anything else as a tar."""
    if not url.endswith((".parquet", ".arrow")):
        return iter_samples(url, storage)
    try:
        with storage.open(url, "rb") as f:
            names = _schema_names(f, url)
    except Exception as exc:
        raise ShardReadError(f"cannot read {redact_url(url)}: {type(exc).__name__}") from None
    image = next((c for c in ("jpg", "image", "png", "webp") if c in names), "jpg")
    return iter_table_samples(url, storage, image, "key" if "key" in names else None)


def expand_units(cfg: InputConfig, storage: Storage = Storage()) -> list[str]:
    """The units of work: shard / Parquet URLs as ``expand_shards`` lists them; for
    ``hf_datasets`` a folder stands for its Arrow files (``cache-*`` skipped), else its Parquet
    files, recursively, sorted."""
    if cfg.format != "hf_datasets":
        return expand_shards(cfg.shards, storage)
    units: list[str] = []
    for url in expand_shards(cfg.shards, storage):
        fs, path = storage.url_to_fs(url)
        if not fs.isdir(path):
            units.append(url)
            continue
        found = sorted(fs.find(path))
        arrow = [f for f in found if f.endswith(".arrow") and not f.rpartition("/")[2].startswith("cache-")]
        files = arrow or [f for f in found if f.endswith(".parquet")]
        if not files:
            raise ValueError(f"no Arrow or Parquet files in the datasets folder {redact_url(url)}")
        units.extend(fs.unstrip_protocol(f) if "://" in url else f for f in files)
    return list(dict.fromkeys(units))


def _batches(f: Any, url: str, wanted: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of the wanted columns present in the file (Parquet: row group by row
    group; Arrow: the IPC stream ``save_to_disk`` writes, or the IPC file format)."""
    if url.endswith(".arrow"):
        try:
            reader = ipc.open_stream(f)
        except pa.ArrowInvalid:
            f.seek(0)
            reader = ipc.open_file(f)
            yield from (reader.get_batch(i).select([c for c in wanted if c in reader.schema.names])
                        for i in range(reader.num_record_batches))
            return
        names = reader.schema.names
        for batch in reader:
            yield batch.select([c for c in wanted if c in names])
        return
    # Buffered reads of a column chunk, no read-ahead threads: the resident memory stays at a few
    # batches (whole column chunks and thread-local allocations grow it with the file; bench_models).
    table = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
    present = [c for c in wanted if c in table.schema_arrow.names]
    yield from table.iter_batches(batch_size=BATCH_ROWS, columns=present, use_threads=False)


def _schema_names(f: Any, url: str) -> list[str]:
    if url.endswith(".arrow"):
        try:
            names = ipc.open_stream(f).schema.names
        except pa.ArrowInvalid:
            f.seek(0)
            names = ipc.open_file(f).schema.names
    else:
        names = pq.ParquetFile(f).schema_arrow.names
    f.seek(0)
    return names


def image_bytes(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, why not) for a binary cell or an HF ``Image`` struct."""
    if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"], None
        path = value.get("path")
        return None, f"image not embedded (only a path: {path!r})" if path else "no image"
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value), None
    return None, "no image" if value in (None, b"") else f"image column holds {type(value).__name__}, not bytes"


def _label(value: Any) -> int:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"label {value!r} is not an integer class index") from None


def iter_table_samples(
    url: str, storage: Storage, image_column: str, key_column: str | None, label_key: str | None = "cls"
) -> Iterator[Sample]:
    """Stream one Parquet / Arrow file's rows as ``Sample``s, in file order. Raises
    ShardReadError (after the rows before the damage) when the file cannot be read, and at once
    when it lacks the image or key column."""
    count = 0
    try:
        with storage.open(url, "rb") as f:
            names = _schema_names(f, url)
            missing = [c for c in (image_column, key_column) if c is not None and c not in names]
            if missing:
                error = ShardReadError(
                    f"cannot read {redact_url(url)}: no column {', '.join(map(repr, missing))} (columns: "
                    f"{', '.join(names[:12])}); set input.image_column / input.key_column"
                )
                error.permanent = True
                raise error
            label = None if label_key is None else next((c for c in (label_key, "label") if c in names), None)
            wanted = [c for c in (image_column, key_column, label) if c is not None]
            seen: set[str] = set()
            for batch in _batches(f, url, wanted):
                for row in batch.to_pylist():
                    yield _row_sample(row, count, image_column, key_column, label, seen)
                    count += 1
    except ShardReadError:
        raise
    except Exception as exc:  # Arrow / OS / fsspec errors alike: one clear failure
        detail = scrub(" ".join(str(exc).split()) or type(exc).__name__, url)
        error = ShardReadError(f"cannot read {redact_url(url)} after {count} rows: {type(exc).__name__}: {detail}")
        error.permanent = count == 0 and isinstance(exc, (FileNotFoundError, IsADirectoryError))
        raise error from None


def _row_sample(
    row: dict[str, Any], index: int, image_column: str, key_column: str | None, label: str | None, seen: set[str]
) -> Sample:
    problems: list[str] = []
    key = row.get(key_column) if key_column is not None else str(index)
    if key is None or key == "":
        key, problems = f"row-{index}", ["no key"]
    key = str(key)
    if key in seen:
        problems.append(f"duplicate key {key!r}: an earlier row of this file has it")
    seen.add(key)
    sample = Sample(key=key)
    sample.image_bytes, why = image_bytes(row.get(image_column))
    if why is not None:
        problems.append(why)
    # datasets' ClassLabel writes -1 for "no label" (test splits).
    if label is not None and row.get(label) is not None and row[label] != -1:
        try:
            sample.label = _label(row[label])
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        sample.error = "; ".join(problems)
    return sample
