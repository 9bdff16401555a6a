"""The Parquet contract of a part (docs/parquet.md): the columns, their Arrow types, and rows -> table.

One row per (image, target), for every attribution method alike. The columns every method writes
come first; then the job's method settings (``variant`` and ``areas`` for the methods with engine
settings, ``layer`` for those with a layer); then the methods' value columns, as each method's card
declares them (``extremal_core.methods.MethodCard``: extremal's ``preserved``, ``scores``...):
those of every method this project ships, in one order, so that outputs of different methods
share one schema, then a method's own from elsewhere. They are nullable and null for the other
methods.

``maps`` holds a row's M saliency maps at the model input resolution ``[M, map_height,
map_width]`` as uint8; ``map_min`` / ``map_max`` (float32) restore the method's own values:
``map = map_min + maps / 255 * (map_max - map_min)`` (signed and unbounded maps included; the
round-trip error is at most half a step, 0.5/255 of the row's range). Stored as Arrow's canonical
``fixed_shape_tensor`` when every row of the part has the same shape (the preprocessing crops),
else as a flat ``list<uint8>`` in C order; ``list<binary>`` of grayscale PNGs with ``png``.

Only plain Arrow types and that canonical extension: pyarrow, pandas, DuckDB and Ray Data read the
parts without this project installed. Error rows have null maps, and a tensor column with nulls
does not convert to numpy (``to_numpy_ndarray``, Ray Data's numpy batches): drop them first, e.g.
``ray.data.read_parquet(uri).filter(expr=col("error").is_null())``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from extremal_core.methods import MethodCard, available_methods, card_of, get_method

# Bumped whenever a column changes name, type or meaning; recorded in manifest.json.
# 1: extremal-only `masks` / `rewards`; 2: every method, `maps` with `map_min` / `map_max`;
# 3: the channel job's feature inversions `inversion_original` / `inversion_perturbed` (PNG);
# 4: value columns from the methods' cards (meaningful perturbation's `deleted_probability`).
SCHEMA_VERSION = 4
MAP_FORMATS = ("tensor", "png")

_F32, _I32 = pa.float32(), pa.int32()

# (name, type) of the scalar and list columns, in docs/parquet.md's order; `maps` goes where its type is known.
_HEAD = [
    ("key", pa.string()), ("shard", pa.string()), ("method", pa.string()), ("model", pa.string()),
    ("target", _I32), ("target_source", pa.string()), ("width", _I32), ("height", _I32),
]
_TAIL = [
    ("map_min", _F32), ("map_max", _F32), ("map_height", _I32), ("map_width", _I32),
    ("resized_width", _I32), ("resized_height", _I32), ("crop_top", _I32), ("crop_left", _I32),
    # the job's method settings (null for methods without them)
    ("variant", pa.string()), ("areas", pa.list_(_F32)), ("layer", pa.string()),
]
_END = [("error", pa.string()), ("seconds", _F32)]

# A card's column type -> Arrow (``rgb_png``: a float image [3, H, W] in [0, 1] stored as PNG bytes).
_ARROW = {
    "float32": _F32, "int32": _I32, "bool": pa.bool_(), "string": pa.string(), "list<float32>": pa.list_(_F32),
    "list<list<float32>>": pa.list_(pa.list_(_F32)), "rgb_png": pa.binary(),
}


def value_columns(card: MethodCard | None = None) -> list[tuple[str, pa.DataType]]:
    """(name, type) of the methods' value columns: every shipped method's (``extremal_core``'s
    registered methods, by name), then ``card``'s own (a method from elsewhere). A name declared
    twice must have one type."""
    shipped = [card_of(get_method(n)) for n in available_methods() if get_method(n).__module__.startswith("extremal_core.")]
    out: dict[str, pa.DataType] = {}
    for c in [*shipped, *([card] if card is not None else [])]:
        for col in c.columns:
            typ = _ARROW[col.type]
            if out.setdefault(col.name, typ) != typ:
                raise ValueError(f"value column {col.name!r} is declared as {out[col.name]} and as {typ}")
    return [(n, t) for n, t in out.items() if n not in {f for f, _ in [*_HEAD, *_TAIL, *_END]}]


def map_type(map_format: str, map_shape: Sequence[int] | None) -> pa.DataType:
    """The ``maps`` column's type: ``fixed_shape_tensor<uint8>[M, h, w]`` for a known shape, flat
    ``list<uint8>`` when shapes vary per row (``map_shape`` None), ``list<binary>`` for PNGs."""
    if map_format == "png":
        return pa.list_(pa.binary())  # one grayscale PNG per map
    if map_format != "tensor":
        raise ValueError(f"unknown map_format {map_format!r}; valid: {', '.join(MAP_FORMATS)}")
    if map_shape is None:
        return pa.list_(pa.uint8())
    if len(map_shape) != 3 or any(int(d) < 1 for d in map_shape):
        raise ValueError(f"map_shape must be [maps, height, width], got {list(map_shape)}")
    return pa.fixed_shape_tensor(pa.uint8(), [int(d) for d in map_shape], dim_names=["map", "height", "width"])


def part_schema(
    map_format: str = "tensor", map_shape: Sequence[int] | None = None, card: MethodCard | None = None
) -> pa.Schema:
    """The schema of a part of a job whose method has ``card`` (see the module docstring).

    Mapping a map back to the original ``width`` x ``height`` image: map pixel (y, x) is pixel
    (y + crop_top, x + crop_left) of the image resized to ``resized_width`` x ``resized_height``;
    negative offsets mean the crop was padded.
    """
    return pa.schema(
        [pa.field(n, t) for n, t in _HEAD]
        + [pa.field("maps", map_type(map_format, map_shape))]
        + [pa.field(n, t) for n, t in [*_TAIL, *value_columns(card), *_END]]
    )


def quantize_maps(maps: Any) -> tuple[np.ndarray, float, float]:
    """Float maps ``[M, h, w]`` -> (uint8 ``[M, h, w]``, map_min, map_max) over the row's own range.

    uint8 and bool inputs are taken as already quantized (0-255, or 0/1 as 0/255) on [0, 1].
    A constant map stores zeros with map_min = map_max.
    """
    arr = np.asarray(maps)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"maps must be [maps, height, width], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr), 0.0, 1.0
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255, 0.0, 1.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"maps must be float, bool or uint8, got {arr.dtype}")
    # float32 bounds, as stored: the scale below must use the same numbers the reader will use.
    arr = np.nan_to_num(arr.astype(np.float64))
    lo, hi = float(np.float32(arr.min())), float(np.float32(arr.max()))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8), lo, lo
    q = np.clip(np.floor((arr - lo) * (255.0 / (hi - lo)) + 0.5), 0, 255).astype(np.uint8)
    return q, lo, hi


def restore_maps(stored: np.ndarray, map_min: float, map_max: float) -> np.ndarray:
    """uint8 maps and their row's scale -> the method's values, float32."""
    return (np.float32(map_min) + stored.astype(np.float32) * np.float32((map_max - map_min) / 255.0)).astype(np.float32)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def rgb_png(image: Any) -> bytes:
    """A float image ``[3, H, W]`` in [0, 1] (clipped) -> RGB PNG bytes; bytes pass through."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    arr = np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0.0, 1.0)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"an RGB image must be [3, H, W], got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray((arr.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _maps_column(rows: Sequence[dict[str, Any]], stored: list[np.ndarray | None], typ: pa.DataType) -> pa.Array:
    if pa.types.is_list(typ) and pa.types.is_binary(typ.value_type):
        return pa.array([None if m is None else [_png(a) for a in m] for m in stored], type=typ)
    if isinstance(typ, pa.FixedShapeTensorType):
        shape = tuple(typ.shape)
        size = int(np.prod(shape))
        flat = np.zeros((len(rows), size), dtype=np.uint8)  # null rows keep zeros under a null bit
        for i, (r, m) in enumerate(zip(rows, stored)):
            if m is not None:
                if m.shape != shape:
                    raise ValueError(f"row {r.get('key')!r}: map shape {m.shape} != part shape {shape}")
                flat[i] = m.reshape(-1)
        valid = np.array([m is not None for m in stored], dtype=bool)
        storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.uint8()), size, mask=pa.array(~valid))
        return pa.ExtensionArray.from_storage(typ, storage)
    return pa.array([None if m is None else m.reshape(-1) for m in stored], type=typ)


def _plain_values(values: list[Any], typ: pa.DataType) -> list[Any]:
    if pa.types.is_list(typ) and pa.types.is_list(typ.value_type):
        return [None if v is None else np.asarray(v, np.float32).tolist() for v in values]
    if pa.types.is_list(typ):
        return [None if v is None else [float(x) for x in np.asarray(v).reshape(-1)] for v in values]
    if pa.types.is_floating(typ):
        return [None if v is None else float(v) for v in values]
    if pa.types.is_integer(typ):
        return [None if v is None else int(v) for v in values]
    if pa.types.is_boolean(typ):
        return [None if v is None else bool(v) for v in values]
    if pa.types.is_binary(typ):  # rgb_png columns (the feature inversions): float [3, H, W] images become PNGs
        return [None if v is None else rgb_png(v) for v in values]
    return values


def rows_to_table(
    rows: Sequence[Mapping[str, Any]],
    map_format: str = "tensor",
    map_shape: Sequence[int] | None = None,
    card: MethodCard | None = None,
) -> pa.Table:
    """A part table from row dicts keyed by column name (missing keys -> null).

    ``maps``: the method's float maps ``[M, h, w]`` (quantized here, with ``map_min`` /
    ``map_max``), or uint8 with the row's ``map_min`` / ``map_max`` given. ``map_height`` /
    ``map_width`` default to its shape. ``map_shape`` None with ``tensor``: flat lists (shapes
    vary per row; every part of a job must have the same column types, so the caller, who knows
    the job, decides). ``card``: the job's method's, for its own value columns. Error rows may
    omit every numeric and map column.
    """
    rows = [dict(r) for r in rows]
    stored: list[np.ndarray | None] = []
    for r in rows:
        if r.get("maps") is None:
            stored.append(None)
            continue
        given = np.asarray(r["maps"])
        q, lo, hi = quantize_maps(given)
        if given.dtype == np.uint8 and r.get("map_min") is not None:
            lo, hi = float(r["map_min"]), float(r["map_max"])
        r["map_min"], r["map_max"] = lo, hi
        areas = r.get("areas")
        if areas is not None and len(areas) != q.shape[0]:
            raise ValueError(f"row {r.get('key')!r}: {q.shape[0]} maps for {len(areas)} areas")
        for name, size in (("map_height", q.shape[1]), ("map_width", q.shape[2])):
            if r.get(name) is None:
                r[name] = size
            elif int(r[name]) != size:
                raise ValueError(f"row {r.get('key')!r}: {name}={r[name]} but the maps are {q.shape[1]}x{q.shape[2]}")
        stored.append(q)
    schema = part_schema(map_format, map_shape, card)
    columns = []
    for fld in schema:
        if fld.name == "maps":
            columns.append(_maps_column(rows, stored, fld.type))
        else:
            columns.append(pa.array(_plain_values([r.get(fld.name) for r in rows], fld.type), type=fld.type))
    return pa.Table.from_arrays(columns, schema=schema)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a part in memory (zstd; uint8 maps compress well)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
