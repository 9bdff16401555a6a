"""The output contract (SPEC section 2): one Parquet part per shard, committed once; done-markers
for resume; a config guard; the manifest.

Layout under ``output_uri`` (any fsspec URL)::

    config.json              {"config_hash": ...}: which config made these outputs
    config.yaml              the resolved config, human-readable
    parts/<shard_id>.parquet one per input shard
    _done/<shard_id>.json    written after its part: the shard is finished (stats inside)
    manifest.json            resolved config, hash, code version, per-shard status

A part is serialised in memory and uploaded with one write (one PUT on S3), because on S3 an
exception inside ``with fs.open(path, "wb")`` still commits a truncated object; locally it is
written to a temp file and renamed. The marker is written only after the part, so a marker always
means a complete part, and re-running a shard overwrites the same part name (no duplicate rows).

The Parquet files use only plain Arrow types plus Arrow's canonical ``fixed_shape_tensor``
extension, so pyarrow, pandas, DuckDB and Ray Data read them without this project installed.
Error rows have null masks, and a tensor column with nulls does not convert to numpy
(``to_numpy_ndarray``, Ray Data's numpy batches and rows): drop them first, e.g.
``ray.data.read_parquet(uri).filter(expr=col("error").is_null())``.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from pipeline.shards import shard_id, url_to_fs

MASK_FORMATS = ("tensor", "png")
PARTS_DIR = "parts"
DONE_DIR = "_done"
CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"
MANIFEST_JSON = "manifest.json"


class OutputError(IOError):
    """The output location cannot be read or written."""


class OutputConflictError(OutputError):
    """The output location holds results of a different configuration."""


# ------------------------------------------------------------------------------------------------
# Schema and rows
# ------------------------------------------------------------------------------------------------


def _mask_type(mask_format: str, mask_shape: Sequence[int] | None) -> pa.DataType:
    if mask_format == "png":
        return pa.list_(pa.binary())  # one grayscale PNG per area
    if mask_format != "tensor":
        raise ValueError(f"unknown mask_format {mask_format!r}; valid: {', '.join(MASK_FORMATS)}")
    if mask_shape is None:
        # Shapes vary per image (no fixed crop): flat uint8 in C order, reshape to
        # [len(areas), mask_height, mask_width].
        return pa.list_(pa.uint8())
    if len(mask_shape) != 3 or any(int(d) < 1 for d in mask_shape):
        raise ValueError(f"mask_shape must be [areas, height, width], got {list(mask_shape)}")
    return pa.fixed_shape_tensor(pa.uint8(), [int(d) for d in mask_shape], dim_names=["area", "height", "width"])


def part_schema(mask_format: str = "tensor", mask_shape: Sequence[int] | None = None) -> pa.Schema:
    """The schema of a part.

    ``masks`` is a ``fixed_shape_tensor<uint8>[A, h, w]`` when ``mask_format="tensor"`` and the
    shape is the same for every row (``mask_shape``, known from the config when preprocessing
    crops to a fixed size); a flat ``list<uint8>`` in C order when shapes vary (``mask_shape`` is
    None); ``list<binary>`` of grayscale PNGs when ``mask_format="png"``. Values are 0-255.

    Mapping a mask back to the original ``width`` x ``height`` image: mask pixel (y, x) is pixel
    (y + crop_top, x + crop_left) of the image resized to ``resized_width`` x ``resized_height``
    (see ``crop_geometry``); negative offsets mean the crop was padded.
    """
    f32 = pa.float32()
    i32 = pa.int32()
    return pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("target", i32),
            pa.field("target_source", pa.string()),
            pa.field("width", i32),
            pa.field("height", i32),
            pa.field("areas", pa.list_(f32)),
            pa.field("rewards", pa.list_(f32)),
            pa.field("scores", pa.list_(f32)),
            pa.field("phi0", f32),
            pa.field("phi_min", f32),
            pa.field("optimal_area", f32),
            pa.field("masks", _mask_type(mask_format, mask_shape)),
            pa.field("mask_height", i32),
            pa.field("mask_width", i32),
            pa.field("resized_width", i32),
            pa.field("resized_height", i32),
            pa.field("crop_top", i32),
            pa.field("crop_left", i32),
            pa.field("variant", pa.string()),
            pa.field("model", pa.string()),
            pa.field("error", pa.string()),
            pa.field("seconds", f32),
        ]
    )


def crop_geometry(width: int, height: int, resize: int | None, crop: int | None) -> dict[str, int]:
    """Where the model input sits in the original image, as torchvision's ``Resize(resize)`` (shorter
    side to ``resize``, the longer one truncated) then ``CenterCrop(crop)`` (padding when the crop
    is larger) compute it. Returns the mapping-back columns of a row: ``resized_width``,
    ``resized_height``, ``crop_top``, ``crop_left``, ``mask_width``, ``mask_height``."""
    rw, rh = width, height
    if resize is not None:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(resize * long / short)
        rw, rh = (resize, new_long) if width <= height else (new_long, resize)
    if crop is None:
        return {"resized_width": rw, "resized_height": rh, "crop_top": 0, "crop_left": 0,
                "mask_width": rw, "mask_height": rh}

    def offset(size: int) -> int:
        # torchvision pads (crop - size) // 2 on the leading side, else crops round((size - crop) / 2)
        return -((crop - size) // 2) if crop > size else int(round((size - crop) / 2.0))

    return {"resized_width": rw, "resized_height": rh, "crop_top": offset(rh), "crop_left": offset(rw),
            "mask_width": crop, "mask_height": crop}


def _masks_uint8(masks: Any) -> np.ndarray:
    """[A, h, w] masks (numpy or CPU tensor; float in [0, 1], bool or uint8) -> uint8 0-255."""
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"masks must be [areas, height, width], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"masks must be float in [0, 1], bool or uint8, got {arr.dtype}")


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _mask_column(rows: Sequence[Mapping[str, Any]], mask_type: pa.DataType, mask_format: str) -> pa.Array:
    masks = [None if r.get("masks") is None else _masks_uint8(r["masks"]) for r in rows]
    for r, m in zip(rows, masks):
        if m is None:
            continue
        areas = r.get("areas")
        if areas is not None and len(areas) != m.shape[0]:
            raise ValueError(f"row {r.get('key')!r}: {m.shape[0]} masks for {len(areas)} areas")
        for name, size in (("mask_height", m.shape[1]), ("mask_width", m.shape[2])):
            if r.get(name) is not None and int(r[name]) != size:
                raise ValueError(f"row {r.get('key')!r}: {name}={r[name]} but the masks are {m.shape[1]}x{m.shape[2]}")
    if mask_format == "png":
        return pa.array([None if m is None else [_png(a) for a in m] for m in masks], type=mask_type)
    if isinstance(mask_type, pa.FixedShapeTensorType):
        shape = tuple(mask_type.shape)
        size = int(np.prod(shape))
        flat = np.zeros((len(rows), size), dtype=np.uint8)  # null rows keep zeros under a null bit
        for i, (r, m) in enumerate(zip(rows, masks)):
            if m is not None:
                if m.shape != shape:
                    raise ValueError(f"row {r.get('key')!r}: mask shape {m.shape} != part shape {shape}")
                flat[i] = m.reshape(-1)
        valid = np.array([m is not None for m in masks], dtype=bool)
        storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.uint8()), size, mask=pa.array(~valid))
        return pa.ExtensionArray.from_storage(mask_type, storage)
    return pa.array([None if m is None else m.reshape(-1) for m in masks], type=mask_type)


def rows_to_table(
    rows: Sequence[Mapping[str, Any]],
    mask_format: str = "tensor",
    mask_shape: Sequence[int] | None = None,
) -> pa.Table:
    """A part table from row dicts keyed by column name (missing keys -> null).

    ``masks`` is ``[A, h, w]`` float in [0, 1] (or uint8/bool); ``mask_height``/``mask_width``
    default to its shape. Error rows (``error`` set) may omit every numeric and mask column.
    """
    schema = part_schema(mask_format, mask_shape)
    rows = list(rows)
    columns: dict[str, pa.Array] = {}
    for fld in schema:
        name = fld.name
        if name == "masks":
            columns[name] = _mask_column(rows, fld.type, mask_format)
            continue
        values = [r.get(name) for r in rows]
        if name in ("mask_height", "mask_width"):
            axis = 1 if name == "mask_height" else 2
            values = [
                v if v is not None or r.get("masks") is None else int(np.shape(np.asarray(r["masks"]))[-3 + axis])
                for r, v in zip(rows, values)
            ]
        if pa.types.is_list(fld.type):
            values = [None if v is None else [float(x) for x in np.asarray(v).reshape(-1)] for v in values]
        elif pa.types.is_floating(fld.type):
            values = [None if v is None else float(v) for v in values]
        elif pa.types.is_integer(fld.type):
            values = [None if v is None else int(v) for v in values]
        columns[name] = pa.array(values, type=fld.type)
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a part in memory (zstd; masks compress well)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Storage
# ------------------------------------------------------------------------------------------------


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None) -> None:
    """Write a whole object at once: one PUT remotely, temp file + rename locally."""
    try:
        fs, path = url_to_fs(url, storage_options)
        if _is_local(fs):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            fs.pipe_file(path, data)
    except Exception as exc:
        raise OutputError(f"cannot write {url}: {_describe(exc)}") from exc


def _read_json(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON object at ``url``, or None if there is none."""
    try:
        fs, path = url_to_fs(url, storage_options)
        fs.invalidate_cache(path)  # other processes write here; never trust a cached listing
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise OutputError(f"cannot read {url}: {_describe(exc)}") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise OutputError(f"{url} is not valid JSON: {exc}") from exc


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()


def part_uri(output_uri: str, shard_url: str) -> str:
    """Where the part of ``shard_url`` goes."""
    return _join(output_uri, PARTS_DIR, f"{shard_id(shard_url)}.parquet")


def done_uri(output_uri: str, shard_url: str) -> str:
    """Where the done-marker of ``shard_url`` goes."""
    return _join(output_uri, DONE_DIR, f"{shard_id(shard_url)}.json")


def commit_part(
    output_uri: str,
    shard_url: str,
    table: pa.Table,
    stats: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Commit one shard's part, then its done-marker; returns the marker.

    The marker holds ``stats`` (e.g. seconds, attempts, config_hash) plus ``shard``, ``part``,
    ``rows``, ``errors`` (rows with ``error`` set) and ``committed_at``. Re-committing a shard
    replaces its part: a shard never has two copies of its rows.
    """
    data = table_to_parquet_bytes(table)
    part = part_uri(output_uri, shard_url)
    errors = 0
    if "error" in table.column_names:
        errors = table.num_rows - table.column("error").null_count
    marker = {
        **dict(stats or {}),
        "shard": shard_url,
        "part": f"{PARTS_DIR}/{shard_id(shard_url)}.parquet",
        "rows": table.num_rows,
        "errors": errors,
        "bytes": len(data),
        "committed_at": time.time(),
    }
    _write_bytes(part, data, storage_options)
    _write_bytes(done_uri(output_uri, shard_url), _json_bytes(marker), storage_options)
    return marker


def load_done(output_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The finished shards: shard URL -> its marker's stats. Unreadable markers are ignored (that
    shard simply runs again)."""
    url = _join(output_uri, DONE_DIR)
    try:
        fs, path = url_to_fs(url, storage_options)
        fs.invalidate_cache(path)
        names = [p for p in fs.ls(path, detail=False) if p.endswith(".json")]
        blobs = fs.cat(names, on_error="omit") if names else {}
    except FileNotFoundError:
        return {}
    except Exception as exc:
        raise OutputError(f"cannot list {url}: {_describe(exc)}") from exc
    done: dict[str, dict[str, Any]] = {}
    for blob in blobs.values():
        try:
            marker = json.loads(blob)
            done[marker["shard"]] = marker
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _clear(output_uri: str, storage_options: dict[str, Any] | None) -> None:
    for sub in (PARTS_DIR, DONE_DIR, MANIFEST_JSON):
        url = _join(output_uri, sub)
        try:
            fs, path = url_to_fs(url, storage_options)
            fs.invalidate_cache(path)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except Exception as exc:
            raise OutputError(f"cannot clear {url}: {_describe(exc)}") from exc


def _has_results(output_uri: str, storage_options: dict[str, Any] | None) -> bool:
    for sub in (PARTS_DIR, DONE_DIR):
        fs, path = url_to_fs(_join(output_uri, sub), storage_options)
        fs.invalidate_cache(path)
        try:
            if fs.ls(path, detail=False):
                return True
        except FileNotFoundError:
            continue
    return False


def check_output(
    output_uri: str,
    config_hash: str,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Claim ``output_uri`` for a config before any part is written.

    ``overwrite``: delete earlier parts, markers and manifest, then claim. Otherwise: the same
    config hash resumes; a different hash (or results with no ``config.json``) raises
    OutputConflictError.
    """
    url = _join(output_uri, CONFIG_JSON)
    if overwrite:
        _clear(output_uri, storage_options)
    else:
        existing = _read_json(url, storage_options)
        if existing is not None and existing.get("config_hash") != config_hash:
            raise OutputConflictError(
                f"{output_uri} holds results of another config (hash {str(existing.get('config_hash'))[:12]}, "
                f"this one {config_hash[:12]}): use another output.uri, or output.overwrite=true to delete them"
            )
        if existing is None:
            try:
                foreign = _has_results(output_uri, storage_options)
            except Exception as exc:
                raise OutputError(f"cannot list {output_uri}: {_describe(exc)}") from exc
            if foreign:
                raise OutputConflictError(
                    f"{output_uri} holds parts but no {CONFIG_JSON}: use another output.uri, "
                    "or output.overwrite=true to delete them"
                )
        if existing is not None:
            return
    _write_bytes(url, _json_bytes({"config_hash": config_hash, "created_at": time.time()}), storage_options)


def write_manifest(
    output_uri: str,
    resolved_config: Mapping[str, Any],
    config_hash: str,
    code_version: str,
    shard_stats: Mapping[str, Mapping[str, Any]],
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` (and the resolved config as ``config.yaml``); returns the manifest.

    ``shard_stats``: shard URL -> {status: done|failed, attempts, rows, errors, seconds, error...};
    a shard without ``status`` counts as done. The manifest adds each shard's part path and a
    summary of counts.
    """
    shards: dict[str, dict[str, Any]] = {}
    for url, stats in shard_stats.items():
        entry = {"status": "done", **dict(stats)}
        entry.setdefault("part", f"{PARTS_DIR}/{shard_id(url)}.parquet")
        shards[url] = entry
    statuses = [s["status"] for s in shards.values()]
    manifest = {
        "config_hash": config_hash,
        "code_version": code_version,
        "written_at": time.time(),
        "summary": {
            "shards": len(shards),
            "done": statuses.count("done"),
            "failed": statuses.count("failed"),
            "rows": sum(int(s.get("rows") or 0) for s in shards.values()),
            "errors": sum(int(s.get("errors") or 0) for s in shards.values()),
        },
        "config": dict(resolved_config),
        "shards": shards,
    }
    _write_bytes(_join(output_uri, CONFIG_YAML), yaml.safe_dump(dict(resolved_config), sort_keys=False).encode(), storage_options)
    _write_bytes(_join(output_uri, MANIFEST_JSON), _json_bytes(manifest), storage_options)
    return manifest
