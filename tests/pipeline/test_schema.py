"""pipeline.schema: the Parquet contract (docs/parquet.md) for every method, maps stored as uint8 with
a per-row scale, and the parts read by pyarrow, pandas and DuckDB without this project."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from pipeline.commit import commit_part, part_uri
from pipeline.geometry import Geometry
from pipeline.io.parts import row_maps
from pipeline.schema import part_schema, quantize_maps, restore_maps, rows_to_table
from pipeline.storage import Storage

# Every method writes these, in this order (docs/parquet.md).
COMMON = ["key", "shard", "method", "model", "target", "target_source", "width", "height", "maps", "map_min",
          "map_max", "map_height", "map_width", "resized_width", "resized_height", "crop_top", "crop_left"]
SETTINGS = ["variant", "areas", "layer"]
# The shipped methods' value columns, by method name (extremal, extremal_channels, meaningful_perturbation).
EXTREMAL = ["preserved", "scores", "phi0", "phi_min", "optimal_area", "optimal_area_reached"]
CHANNELS = ["channel_masks", "inversion_original", "inversion_perturbed"]
AREAS = [0.05, 0.1, 0.2]


def extremal_rows(shard: str, n: int = 3, size: int = 8, with_error: bool = True) -> list[dict]:
    """n rows of an extremal job (masks [3, size, size] in [0, 1]) and an error row."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rows.append(
            {
                "key": f"k{i}", "shard": shard, "method": "extremal", "model": "resnet50.IMAGENET1K_V2",
                "target": i, "target_source": "label", "width": 40 + i, "height": 30,
                "maps": rng.random((len(AREAS), size, size)).astype(np.float32),
                "variant": "preserve", "areas": AREAS, "preserved": np.array([1.0, 2.0, 3.0]) + i,
                "scores": [0.2, 0.9, 1.25], "phi0": 3.0, "phi_min": -1.0, "optimal_area": 0.2,
                "optimal_area_reached": True, "seconds": 1.5,
                **Geometry.of(40 + i, 30, None, size).columns(),
            }
        )
    if with_error:
        rows.append({"key": "broken", "shard": shard, "method": "extremal", "error": "cannot decode image: truncated"})
    return rows


def test_schema_has_the_spec_columns_with_plain_types() -> None:
    schema = part_schema("tensor", (3, 8, 8))
    assert schema.names == [*COMMON, *SETTINGS, *EXTREMAL, *CHANNELS, "deleted_probability", "error", "seconds"]
    types = {f.name: f.type for f in schema}
    assert types["target"] == pa.int32() and types["width"] == pa.int32() and types["map_height"] == pa.int32()
    assert types["map_min"] == pa.float32() and types["map_max"] == pa.float32()
    assert types["areas"] == pa.list_(pa.float32()) and types["preserved"] == pa.list_(pa.float32())
    assert types["optimal_area_reached"] == pa.bool_() and types["channel_masks"] == pa.list_(pa.list_(pa.float32()))
    assert isinstance(types["maps"], pa.FixedShapeTensorType)
    assert types["maps"].value_type == pa.uint8() and list(types["maps"].shape) == [3, 8, 8]
    assert part_schema("tensor").field("maps").type == pa.list_(pa.uint8())
    assert part_schema("png").field("maps").type == pa.list_(pa.binary())
    with pytest.raises(ValueError, match="map_format"):
        part_schema("jpeg")


def test_signed_unbounded_maps_round_trip_within_a_step_of_their_range() -> None:
    rng = np.random.default_rng(1)
    signed = (rng.standard_normal((2, 9, 7)) * 37.0 - 5.0).astype(np.float32)  # e.g. a gradient map
    stored, lo, hi = quantize_maps(signed)
    assert stored.dtype == np.uint8 and lo < 0 < hi
    back = restore_maps(stored, lo, hi)
    assert np.abs(back - signed).max() <= (signed.max() - signed.min()) / 255
    # Through a table and a reader: the same bound, from the row's own map_min / map_max.
    row = {"key": "g", "method": "gradient", "maps": signed, "width": 7, "height": 9,
           **Geometry.of(7, 9, None, None).columns()}
    got = rows_to_table([row], "tensor", (2, 9, 7)).to_pylist()[0]
    assert got["map_min"] == pytest.approx(signed.min()) and got["map_max"] == pytest.approx(signed.max())
    assert np.abs(row_maps(got) - signed).max() <= (signed.max() - signed.min()) / 255
    constant = quantize_maps(np.full((1, 3, 3), 0.7, np.float32))
    assert constant[1] == constant[2] and restore_maps(*constant) == pytest.approx(0.7)


def test_rows_to_table_extremal_maps_and_error_rows() -> None:
    rows = extremal_rows("s3://b/shard.tar")
    table = rows_to_table(rows, "tensor", (3, 8, 8))
    assert table.schema == part_schema("tensor", (3, 8, 8)) and table.num_rows == 4
    good = table.slice(0, 3).to_pylist()
    for r, g in zip(rows, good):
        assert np.abs(row_maps(g) - r["maps"]).max() <= 0.5 / 255 + 1e-6
        assert g["map_height"] == 8 and g["layer"] is None and g["channel_masks"] is None
    err = table.slice(3).to_pylist()[0]
    assert err["error"].startswith("cannot decode") and err["key"] == "broken" and err["method"] == "extremal"
    for col in ("target", "width", "areas", "scores", "phi0", "optimal_area", "maps", "map_min", "map_height", "seconds"):
        assert err[col] is None, col
    assert table.column("error").null_count == 3


def test_other_methods_leave_the_extremal_columns_null() -> None:
    bump = np.exp(-np.linspace(-2, 2, 8)[:, None] ** 2 - np.linspace(-2, 2, 8)[None, :] ** 2)[None].astype(np.float32)
    row = {"key": "c", "method": "center", "maps": bump, "width": 8, "height": 8, **Geometry.of(8, 8, None, 8).columns()}
    channel = {**row, "method": "extremal_channels", "maps": bump * 40, "layer": "layer3", "areas": [0.1],
               "channel_masks": np.ones((1, 5), np.float32), "phi0": 2.0}
    got = rows_to_table([row, channel], "tensor", (1, 8, 8)).to_pylist()
    assert all(got[0][c] is None for c in [*EXTREMAL, *CHANNELS])
    assert got[1]["layer"] == "layer3" and got[1]["channel_masks"] == [[1.0] * 5]
    np.testing.assert_allclose(row_maps(got[1]), bump * 40, atol=40 / 255)


def test_rows_to_table_variable_shapes_and_png() -> None:
    rows = extremal_rows("x.tar", with_error=True)
    rows[1]["maps"] = np.ones((3, 5, 7), np.float32)
    with pytest.raises(ValueError, match="map_height"):
        rows_to_table(rows, "tensor")  # the row still says 8 x 8
    rows[1].update(map_height=5, map_width=7)
    r1 = rows_to_table(rows, "tensor").to_pylist()[1]
    assert (r1["map_height"], r1["map_width"]) == (5, 7)
    assert row_maps(r1).shape == (3, 5, 7) and np.allclose(row_maps(r1), 1.0)
    png = rows_to_table(rows, "png").to_pylist()
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in png[0]["maps"]])
    assert decoded.shape == (3, 8, 8) and np.abs(row_maps(png[0]) - rows[0]["maps"]).max() <= 0.5 / 255 + 1e-6
    assert png[3]["maps"] is None
    with pytest.raises(ValueError, match="map shape"):
        rows_to_table(rows, "tensor", (3, 8, 8))  # the 5x7 row does not fit a fixed 8x8 part
    bad = extremal_rows("x.tar", with_error=False)
    bad[0]["maps"] = bad[0]["maps"][:2]
    with pytest.raises(ValueError, match="2 maps for 3 areas"):
        rows_to_table(bad, "tensor", (3, 8, 8))


@pytest.mark.parametrize(
    ("width", "height", "resize", "crop"),
    [(500, 375, 256, 224), (375, 500, 256, 224), (333, 333, 256, 224), (101, 57, 64, 48), (40, 30, None, 36),
     (41, 29, 32, 40), (640, 480, 224, None)],
)
def test_geometry_matches_torchvision(width: int, height: int, resize: int | None, crop: int | None) -> None:
    geo = Geometry.of(width, height, resize, crop).columns()
    # Pixel values encode their position in the resized image, so the crop's top-left tells the offset.
    resized = T.Resize(resize, antialias=False)(torch.zeros(1, height, width)) if resize else torch.zeros(1, height, width)
    assert (geo["resized_height"], geo["resized_width"]) == tuple(resized.shape[1:])
    rh, rw = resized.shape[1:]
    index = torch.arange(1, rh * rw + 1, dtype=torch.float64).reshape(1, rh, rw)
    out = T.CenterCrop(crop)(index) if crop else index
    assert (geo["map_height"], geo["map_width"]) == tuple(out.shape[1:])
    nz = out[0].nonzero()
    first_y, first_x = (int(v) for v in nz.min(0).values)  # first non-padded pixel
    value = int(out[0, first_y, first_x]) - 1
    y, x = divmod(value, rw)
    assert (geo["crop_top"], geo["crop_left"]) == (y - first_y, x - first_x)


_READER = r"""
import json, sys
import duckdb, pandas as pd, pyarrow.parquet as pq
path = sys.argv[1]
t = pq.read_table(path)
maps = t.column("maps").combine_chunks()
arr = maps.slice(0, 3).to_numpy_ndarray()  # the error row's maps are null
lo = t.column("map_min").to_numpy(zero_copy_only=False)[:3, None, None, None]
hi = t.column("map_max").to_numpy(zero_copy_only=False)[:3, None, None, None]
values = lo + arr / 255 * (hi - lo)
df = pd.read_parquet(path)
con = duckdb.connect()
rows = con.execute(
    f"select key, target, len(maps) as n, maps[1] as m0, areas, error from read_parquet('{path}') order by key"
).fetchall()
types = dict(con.execute(f"select column_name, column_type from (describe select * from read_parquet('{path}'))").fetchall())
print(json.dumps({
    "shape": list(arr.shape), "values": values.tolist(), "pandas_rows": len(df),
    "pandas_keys": df["key"].tolist(), "pandas_map0": int(df["maps"][0].reshape(-1)[0]),
    "duck": [[r[0], r[1], r[2], r[3], r[5]] for r in rows], "duck_areas": rows[0][4], "duck_types": types,
    "imported_ours": [m for m in ("pipeline", "extremal_core") if m in sys.modules],
}))
"""


def test_parquet_round_trip_with_pyarrow_pandas_duckdb(tmp_path: Path) -> None:
    shard = str(tmp_path / "shard-000000.tar")
    rows = extremal_rows(shard)
    table = rows_to_table(rows, "tensor", (3, 8, 8))
    out = tmp_path / "out"
    commit_part(str(out), shard, table, {"seconds": 1.0}, Storage())
    proc = subprocess.run(
        [sys.executable, "-c", _READER, part_uri(str(out), shard)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    stored = table.column("maps").combine_chunks().slice(0, 3).to_numpy_ndarray()
    assert got["imported_ours"] == []
    assert got["shape"] == [3, 3, 8, 8]
    assert np.abs(np.asarray(got["values"]) - np.stack([r["maps"] for r in rows[:3]])).max() <= 0.5 / 255 + 1e-6
    assert got["pandas_rows"] == 4 and got["pandas_keys"] == ["k0", "k1", "k2", "broken"]
    assert got["pandas_map0"] == int(stored[0].reshape(-1)[0])
    assert got["duck"][0] == ["broken", None, None, None, "cannot decode image: truncated"]
    assert got["duck"][1] == ["k0", 0, 3 * 8 * 8, int(stored[0].reshape(-1)[0]), None]
    assert got["duck_areas"] is None and got["duck_types"]["maps"].startswith("UTINYINT")
    assert got["duck_types"]["target"] == "INTEGER" and got["duck_types"]["areas"] == "FLOAT[]"
