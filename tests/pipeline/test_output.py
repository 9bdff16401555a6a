"""pipeline.output: the Parquet contract, atomic commits, resume markers, config guard, manifest;
locally and on a real S3 endpoint (moto server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.transforms import v2 as T

from pipeline.config import config_hash, config_to_dict, load_config
from pipeline.output import (
    OutputConflictError,
    OutputError,
    check_output,
    commit_part,
    crop_geometry,
    done_uri,
    load_done,
    part_schema,
    part_uri,
    rows_to_table,
    write_manifest,
)
from pipeline.shards import shard_id

SPEC_COLUMNS = [
    "key", "shard", "target", "target_source", "width", "height", "areas", "rewards", "scores",
    "phi0", "phi_min", "optimal_area", "masks", "mask_height", "mask_width", "variant", "model",
    "error", "seconds",
]
AREAS = [0.05, 0.1, 0.2]


def _rows(shard: str, n: int = 3, size: int = 8, with_error: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rows.append(
            {
                "key": f"k{i}",
                "shard": shard,
                "target": i,
                "target_source": "label",
                "width": 40 + i,
                "height": 30,
                "areas": AREAS,
                "rewards": np.array([1.0, 2.0, 3.0]) + i,
                "scores": [0.2, 0.9, 1.25],
                "phi0": 3.0,
                "phi_min": -1.0,
                "optimal_area": 0.2,
                "masks": rng.random((len(AREAS), size, size)).astype(np.float32),
                "variant": "preserve",
                "model": "resnet50:IMAGENET1K_V2",
                "seconds": 1.5,
                **crop_geometry(40 + i, 30, None, size),
            }
        )
    if with_error:
        rows.append({"key": "broken", "shard": shard, "error": "cannot decode image: truncated"})
    return rows


# ------------------------------------------------------------------------------------------------
# Schema and tables
# ------------------------------------------------------------------------------------------------


def test_schema_has_the_spec_columns_with_plain_types() -> None:
    schema = part_schema("tensor", (3, 8, 8))
    names = schema.names
    assert [c for c in names if c in SPEC_COLUMNS] == SPEC_COLUMNS  # SPEC order
    assert set(names) - set(SPEC_COLUMNS) == {"resized_width", "resized_height", "crop_top", "crop_left"}
    types = {f.name: f.type for f in schema}
    assert types["target"] == pa.int32() and types["width"] == pa.int32() and types["mask_height"] == pa.int32()
    assert types["areas"] == pa.list_(pa.float32()) and types["scores"] == pa.list_(pa.float32())
    assert types["phi0"] == pa.float32() and types["seconds"] == pa.float32()
    assert isinstance(types["masks"], pa.FixedShapeTensorType)
    assert types["masks"].value_type == pa.uint8() and list(types["masks"].shape) == [3, 8, 8]
    assert part_schema("tensor").field("masks").type == pa.list_(pa.uint8())
    assert part_schema("png").field("masks").type == pa.list_(pa.binary())
    with pytest.raises(ValueError, match="mask_format"):
        part_schema("jpeg")


def test_rows_to_table_tensor_masks_and_error_rows() -> None:
    rows = _rows("s3://b/shard.tar")
    table = rows_to_table(rows, "tensor", (3, 8, 8))
    assert table.schema == part_schema("tensor", (3, 8, 8))
    assert table.num_rows == 4
    good = table.slice(0, 3)
    masks = good.column("masks").combine_chunks().to_numpy_ndarray()
    expected = np.stack([(np.clip(r["masks"], 0, 1) * 255 + 0.5).astype(np.uint8) for r in rows[:3]])
    np.testing.assert_array_equal(masks, expected)
    assert good.column("mask_height").to_pylist() == [8, 8, 8]  # taken from the masks
    err = table.slice(3).to_pylist()[0]
    assert err["error"].startswith("cannot decode") and err["key"] == "broken"
    for col in ("target", "width", "areas", "scores", "phi0", "optimal_area", "masks", "mask_height", "seconds"):
        assert err[col] is None, col
    assert table.column("error").null_count == 3


def test_rows_to_table_variable_shapes_and_png() -> None:
    rows = _rows("x.tar", with_error=True)
    rows[1]["masks"] = np.ones((3, 5, 7), np.float32)
    with pytest.raises(ValueError, match="mask_height"):
        rows_to_table(rows, "tensor")  # the row still says 8 x 8
    rows[1].update(mask_height=5, mask_width=7)
    flat = rows_to_table(rows, "tensor")
    r1 = flat.to_pylist()[1]
    assert (r1["mask_height"], r1["mask_width"]) == (5, 7)
    assert np.asarray(r1["masks"], np.uint8).reshape(len(r1["areas"]), 5, 7).min() == 255
    png = rows_to_table(rows, "png").to_pylist()
    import io

    from PIL import Image

    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in png[1]["masks"]])
    assert decoded.shape == (3, 5, 7) and decoded.min() == 255
    assert png[3]["masks"] is None
    with pytest.raises(ValueError, match="mask shape"):
        rows_to_table(rows, "tensor", (3, 8, 8))  # the 5x7 row does not fit a fixed 8x8 part
    bad = _rows("x.tar", with_error=False)
    bad[0]["masks"] = bad[0]["masks"][:2]
    with pytest.raises(ValueError, match="2 masks for 3 areas"):
        rows_to_table(bad, "tensor", (3, 8, 8))


@pytest.mark.parametrize(
    ("width", "height", "resize", "crop"),
    [(500, 375, 256, 224), (375, 500, 256, 224), (333, 333, 256, 224), (101, 57, 64, 48), (40, 30, None, 36),
     (41, 29, 32, 40), (640, 480, 224, None)],
)
def test_crop_geometry_matches_torchvision(width: int, height: int, resize: int | None, crop: int | None) -> None:
    geo = crop_geometry(width, height, resize, crop)
    # Pixel values encode their position in the resized image, so the crop's top-left tells the offset.
    resized = T.Resize(resize, antialias=False)(torch.zeros(1, height, width)) if resize else torch.zeros(1, height, width)
    assert (geo["resized_height"], geo["resized_width"]) == tuple(resized.shape[1:])
    rh, rw = resized.shape[1:]
    index = torch.arange(1, rh * rw + 1, dtype=torch.float64).reshape(1, rh, rw)
    out = T.CenterCrop(crop)(index) if crop else index
    assert (geo["mask_height"], geo["mask_width"]) == tuple(out.shape[1:])
    nz = out[0].nonzero()
    first_y, first_x = (int(v) for v in nz.min(0).values)  # first non-padded pixel
    value = int(out[0, first_y, first_x]) - 1
    y, x = divmod(value, rw)
    assert (geo["crop_top"], geo["crop_left"]) == (y - first_y, x - first_x)


# ------------------------------------------------------------------------------------------------
# Round trip with readers that do not import this project
# ------------------------------------------------------------------------------------------------

_READER = r"""
import json, sys
import duckdb, pandas as pd, pyarrow.parquet as pq
path = sys.argv[1]
t = pq.read_table(path)
masks = t.column("masks").combine_chunks()
arr = masks.slice(0, 3).to_numpy_ndarray()  # the error row's mask is null
df = pd.read_parquet(path)
con = duckdb.connect()
rows = con.execute(
    f"select key, target, len(masks) as n, masks[1] as m0, areas, error from read_parquet('{path}') order by key"
).fetchall()
types = dict(con.execute(f"select column_name, column_type from (describe select * from read_parquet('{path}'))").fetchall())
print(json.dumps({
    "shape": list(arr.shape), "sum": int(arr[:3].astype("int64").sum()), "pandas_rows": len(df),
    "pandas_keys": df["key"].tolist(), "pandas_mask0": int(df["masks"][0].reshape(-1)[0]),
    "duck": [[r[0], r[1], r[2], r[3], r[5]] for r in rows], "duck_areas": rows[0][4], "duck_types": types,
    "imported_ours": [m for m in ("pipeline", "extremal_core") if m in sys.modules],
}))
"""


def test_parquet_round_trip_with_pyarrow_pandas_duckdb(tmp_path: Path) -> None:
    shard = str(tmp_path / "shard-000000.tar")
    rows = _rows(shard)
    table = rows_to_table(rows, "tensor", (3, 8, 8))
    out = tmp_path / "out"
    commit_part(str(out), shard, table, {"seconds": 1.0}, None)
    part = part_uri(str(out), shard)
    proc = subprocess.run(
        [sys.executable, "-c", _READER, part], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    expected = np.stack([(np.clip(r["masks"], 0, 1) * 255 + 0.5).astype(np.uint8) for r in rows[:3]])
    assert got["imported_ours"] == []
    assert got["shape"] == [3, 3, 8, 8]
    assert got["sum"] == int(expected.astype(np.int64).sum())
    assert got["pandas_rows"] == 4 and got["pandas_keys"] == ["k0", "k1", "k2", "broken"]
    assert got["pandas_mask0"] == int(expected[0].reshape(-1)[0])
    assert got["duck"][0] == ["broken", None, None, None, "cannot decode image: truncated"]
    assert got["duck"][1] == ["k0", 0, 3 * 8 * 8, int(expected[0].reshape(-1)[0]), None]
    assert got["duck_areas"] is None and got["duck_types"]["masks"].startswith("UTINYINT")
    assert got["duck_types"]["target"] == "INTEGER" and got["duck_types"]["areas"] == "FLOAT[]"


# ------------------------------------------------------------------------------------------------
# Commit, resume, config guard, manifest
# ------------------------------------------------------------------------------------------------


def test_commit_part_local_is_idempotent(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    shard = "/data/shard-000003.tar"
    marker = commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {"attempts": 1, "seconds": 2.5}, None)
    assert marker["rows"] == 4 and marker["errors"] == 1 and marker["attempts"] == 1 and marker["shard"] == shard
    marker = commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {"attempts": 2}, None)
    parts = sorted(p.name for p in (tmp_path / "out" / "parts").iterdir())
    assert parts == [f"{shard_id(shard)}.parquet"]  # re-running a shard replaces its part
    assert pq.read_table(tmp_path / "out" / "parts").num_rows == 4
    assert load_done(out)[shard]["attempts"] == 2
    assert not list((tmp_path / "out").rglob("*.tmp-*"))


def test_load_done_and_resume_markers(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert load_done(out) == {}
    shards = [f"/data/shard-{i:06d}.tar" for i in range(3)]
    for s in shards[:2]:
        commit_part(out, s, rows_to_table(_rows(s, with_error=False), "tensor", (3, 8, 8)), {"config_hash": "h"}, None)
    (tmp_path / "out" / "_done" / "garbage.json").write_text("{not json")
    done = load_done(out)
    assert sorted(done) == shards[:2]
    assert done[shards[0]]["rows"] == 3 and done[shards[0]]["errors"] == 0 and done[shards[0]]["config_hash"] == "h"
    assert Path(done_uri(out, shards[0])).exists()


def test_check_output_guards_the_config(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    check_output(out, "a" * 64, False, None)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config_hash"] == "a" * 64
    shard = "/data/s.tar"
    commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {}, None)
    check_output(out, "a" * 64, False, None)  # same config: resume, keep the work
    assert shard in load_done(out)
    with pytest.raises(OutputConflictError, match=r"another config.*overwrite"):
        check_output(out, "b" * 64, False, None)
    assert shard in load_done(out)  # refused: nothing deleted
    check_output(out, "b" * 64, True, None)  # overwrite: start over
    assert load_done(out) == {} and not list((tmp_path / "out").rglob("*.parquet"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config_hash"] == "b" * 64


def test_check_output_refuses_parts_without_config(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    commit_part(out, "/d/s.tar", rows_to_table(_rows("/d/s.tar"), "tensor", (3, 8, 8)), {}, None)
    with pytest.raises(OutputConflictError, match="no config.json"):
        check_output(out, "c" * 64, False, None)


def test_write_manifest_and_config_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["input.shards=/d/s-{0..1}.tar", "model.arch=resnet50", f"output.uri={tmp_path}/out"])
    out = cfg.output.uri
    h = config_hash(cfg)
    check_output(out, h, False, None)
    commit_part(out, "/d/s-0.tar", rows_to_table(_rows("/d/s-0.tar"), "tensor", (3, 8, 8)), {"attempts": 1, "seconds": 3.0}, None)
    stats = dict(load_done(out))
    stats["/d/s-1.tar"] = {"status": "failed", "attempts": 3, "error": "ShardReadError: truncated tar"}
    manifest = write_manifest(out, config_to_dict(cfg), h, "abc1234", stats, None)
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["summary"] == {"shards": 2, "done": 1, "failed": 1, "rows": 4, "errors": 1}
    assert on_disk["summary"] == manifest["summary"]
    assert on_disk["config_hash"] == h and on_disk["code_version"] == "abc1234"
    assert on_disk["shards"]["/d/s-0.tar"]["status"] == "done"
    assert on_disk["shards"]["/d/s-1.tar"]["part"] == f"parts/{shard_id('/d/s-1.tar')}.parquet"
    assert load_config(str(tmp_path / "out" / "config.yaml"), []) == cfg  # the resolved config reloads


# ------------------------------------------------------------------------------------------------
# S3
# ------------------------------------------------------------------------------------------------


def test_commit_resume_and_guard_on_s3(s3_bucket: str, s3_options: dict) -> None:
    out = f"{s3_bucket}/results/run1"
    shards = [f"{s3_bucket}/shards/shard-{i:06d}.tar" for i in range(2)]
    check_output(out, "h1", False, s3_options)
    for s in shards:
        commit_part(out, s, rows_to_table(_rows(s), "tensor", (3, 8, 8)), {"attempts": 1}, s3_options)
    done = load_done(out, s3_options)
    assert sorted(done) == shards and all(m["rows"] == 4 for m in done.values())
    fs = fsspec.filesystem("s3", **s3_options)
    table = pq.read_table(f"{out[5:]}/parts", filesystem=fs)
    assert table.num_rows == 8 and isinstance(table.schema.field("masks").type, pa.FixedShapeTensorType)
    with pytest.raises(OutputConflictError):
        check_output(out, "h2", False, s3_options)
    write_manifest(out, {"a": 1}, "h1", "v0", done, s3_options)
    assert json.loads(fs.cat_file(f"{out[5:]}/manifest.json"))["summary"]["rows"] == 8
    check_output(out, "h2", True, s3_options)
    assert load_done(out, s3_options) == {}
    assert not fs.exists(f"{out[5:]}/parts/{shard_id(shards[0])}.parquet")


def test_unreachable_endpoint_fails_fast_and_clearly(tmp_path: Path) -> None:
    opts = {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}},
    }
    table = rows_to_table(_rows("s3://b/s.tar"), "tensor", (3, 8, 8))
    start = time.monotonic()
    with pytest.raises(OutputError, match=r"cannot write s3://b/out/parts/.*127\.0\.0\.1:9"):
        commit_part("s3://b/out", "s3://b/s.tar", table, {}, opts)
    with pytest.raises(OutputError, match="127.0.0.1:9"):
        check_output("s3://b/out", "h", False, opts)
    with pytest.raises(OutputError, match="127.0.0.1:9"):
        load_done("s3://b/out", opts)
    assert time.monotonic() - start < 15
