"""pipeline.commit (over pipeline.storage): atomic commits, resume markers, config guard, manifest; locally and on a real
S3 endpoint (moto server). The columns themselves: test_schema.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commit import OutputConflictError, check_output, commit_part, done_uri, load_done, write_manifest
from pipeline.config_hash import config_hash
from pipeline.config_load import config_to_dict, load_config
from pipeline.schema import SCHEMA_VERSION, rows_to_table
from pipeline.shards import shard_id
from pipeline.storage import OutputError, Storage
from tests.pipeline.test_schema import extremal_rows as _rows

# ------------------------------------------------------------------------------------------------
# Commit, resume, config guard, manifest
# ------------------------------------------------------------------------------------------------


def test_commit_part_local_is_idempotent(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    shard = "/data/shard-000003.tar"
    marker = commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {"attempts": 1, "seconds": 2.5}, Storage())
    assert marker["rows"] == 4 and marker["errors"] == 1 and marker["attempts"] == 1 and marker["shard"] == shard
    marker = commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {"attempts": 2}, Storage())
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
        commit_part(out, s, rows_to_table(_rows(s, with_error=False), "tensor", (3, 8, 8)), {"config_hash": "h"}, Storage())
    (tmp_path / "out" / "_done" / "garbage.json").write_text("{not json")
    done = load_done(out)
    assert sorted(done) == shards[:2]
    assert done[shards[0]]["rows"] == 3 and done[shards[0]]["errors"] == 0 and done[shards[0]]["config_hash"] == "h"
    assert Path(done_uri(out, shards[0])).exists()


def test_check_output_guards_the_config(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    check_output(out, "a" * 64, False, Storage())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config_hash"] == "a" * 64
    shard = "/data/s.tar"
    commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {}, Storage())
    check_output(out, "a" * 64, False, Storage())  # same config: resume, keep the work
    assert shard in load_done(out)
    with pytest.raises(OutputConflictError, match=r"another config.*overwrite"):
        check_output(out, "b" * 64, False, Storage())
    assert shard in load_done(out)  # refused: nothing deleted
    check_output(out, "b" * 64, True, Storage())  # overwrite: start over
    assert load_done(out) == {} and not list((tmp_path / "out").rglob("*.parquet"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config_hash"] == "b" * 64


def test_check_output_refuses_parts_without_config(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    commit_part(out, "/d/s.tar", rows_to_table(_rows("/d/s.tar"), "tensor", (3, 8, 8)), {}, Storage())
    with pytest.raises(OutputConflictError, match="no config.json"):
        check_output(out, "c" * 64, False, Storage())


def test_write_manifest_and_config_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["input.shards=/d/s-{0..1}.tar", "model.arch=resnet50", f"output.uri={tmp_path}/out"])
    out = cfg.output.uri
    h = config_hash(cfg)
    check_output(out, h, False, Storage())
    commit_part(out, "/d/s-0.tar", rows_to_table(_rows("/d/s-0.tar"), "tensor", (3, 8, 8)), {"attempts": 1, "seconds": 3.0})
    stats = dict(load_done(out))
    stats["/d/s-1.tar"] = {"status": "failed", "attempts": 3, "error": "ShardReadError: truncated tar"}
    manifest = write_manifest(out, config_to_dict(cfg), h, "abc1234", stats, Storage())
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["summary"] == {"shards": 2, "done": 1, "failed": 1, "rows": 4, "errors": 1}
    assert on_disk["summary"] == manifest["summary"]
    assert on_disk["config_hash"] == h and on_disk["code_version"] == "abc1234"
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["shards"]["/d/s-0.tar"]["status"] == "done"
    assert on_disk["shards"]["/d/s-1.tar"]["part"] == f"parts/{shard_id('/d/s-1.tar')}.parquet"
    assert load_config(str(tmp_path / "out" / "config.yaml"), []) == cfg  # the resolved config reloads


# ------------------------------------------------------------------------------------------------
# S3
# ------------------------------------------------------------------------------------------------


def test_commit_resume_and_guard_on_s3(s3_bucket: str, s3_options: dict) -> None:
    out = f"{s3_bucket}/results/run1"
    shards = [f"{s3_bucket}/shards/shard-{i:06d}.tar" for i in range(2)]
    check_output(out, "h1", False, Storage(s3_options))
    for s in shards:
        commit_part(out, s, rows_to_table(_rows(s), "tensor", (3, 8, 8)), {"attempts": 1}, Storage(s3_options))
    done = load_done(out, Storage(s3_options))
    assert sorted(done) == shards and all(m["rows"] == 4 for m in done.values())
    fs = fsspec.filesystem("s3", **s3_options)
    table = pq.read_table(f"{out[5:]}/parts", filesystem=fs)
    assert table.num_rows == 8 and isinstance(table.schema.field("maps").type, pa.FixedShapeTensorType)
    with pytest.raises(OutputConflictError):
        check_output(out, "h2", False, Storage(s3_options))
    write_manifest(out, {"a": 1}, "h1", "v0", done, Storage(s3_options))
    assert json.loads(fs.cat_file(f"{out[5:]}/manifest.json"))["summary"]["rows"] == 8
    check_output(out, "h2", True, Storage(s3_options))
    assert load_done(out, Storage(s3_options)) == {}
    assert not fs.exists(f"{out[5:]}/parts/{shard_id(shards[0])}.parquet")


def test_unreachable_endpoint_fails_fast_and_clearly(tmp_path: Path) -> None:
    opts = {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}},
    }
    table = rows_to_table(_rows("s3://b/s.tar"), "tensor", (3, 8, 8))
    start = time.monotonic()
    with pytest.raises(OutputError, match=r"cannot write s3://b/out/parts/.*127\.0\.0\.1:9"):
        commit_part("s3://b/out", "s3://b/s.tar", table, {}, Storage(opts))
    with pytest.raises(OutputError, match="127.0.0.1:9"):
        check_output("s3://b/out", "h", False, Storage(opts))
    with pytest.raises(OutputError, match="127.0.0.1:9"):
        load_done("s3://b/out", Storage(opts))
    assert time.monotonic() - start < 15
