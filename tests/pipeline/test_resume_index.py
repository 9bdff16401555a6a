"""Resume at scale: the done state from one listing of ``_done/`` plus the driver's compacted
index (``pipeline.done_index``), the lease's passed checks re-used within a window, and the
final writes that may fail without hiding the run's summary."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from pipeline.commit import DONE_DIR, check_output, commit_part, done_uri, load_done
from pipeline.done_index import INDEX_DIR, IndexWriter
from pipeline.lease import Lease, LeaseLostError
from pipeline.schema import rows_to_table
from pipeline.storage import Storage
from tests.pipeline.conftest import tiny_config
from tests.pipeline.test_schema import extremal_rows as _rows
from tests.shard_factory import write_shards


def _commit(out: str, shard: str) -> dict:
    return commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {"config_hash": "h", "attempts": 1})


def test_resume_reads_the_index_not_the_markers_and_the_markers_stay_the_truth(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    shards = [f"/d/s-{i}.tar" for i in range(4)]
    markers = [_commit(out, s) for s in shards[:3]]
    IndexWriter(out, Storage(), None).compact(markers[:2])  # the third committed after the index was written
    # A marker the index covers is not read: its content no longer matters, only that it is listed.
    Path(done_uri(out, shards[0])).write_text("{not json")
    done = load_done(out)
    assert sorted(done) == shards[:3]  # the index's two, and the unindexed one read itself
    assert done[shards[0]]["rows"] == 4 and done[shards[2]]["rows"] == 4
    Path(done_uri(out, shards[1])).unlink()  # a marker gone: its shard is not done, index or not
    assert sorted(load_done(out)) == [shards[0], shards[2]]


def test_index_segments_are_compacted_into_one(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    writer = IndexWriter(out, Storage(), None)
    markers = [_commit(out, f"/d/s-{i}.tar") for i in range(3)]
    for m in markers:
        writer.add(m)
    writer.flush()
    writer.add(markers[0])
    writer.flush()
    assert len(list((tmp_path / "out" / INDEX_DIR).glob("*.jsonl"))) == 2
    writer.compact(markers)
    (segment,) = (tmp_path / "out" / INDEX_DIR).glob("*.jsonl")
    assert [json.loads(line)["shard"] for line in segment.read_text().splitlines()] == [m["shard"] for m in markers]
    assert sorted(load_done(out)) == sorted(m["shard"] for m in markers)


def test_a_passed_check_is_reused_only_within_its_window_and_a_takeover_outwaits_it(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    old = Lease(out, "h", ttl_s=2.0)
    old.acquire()
    token = old.token
    assert token.reuse_s == 0.5
    token.check()  # one LIST, then re-used
    old.generation = None  # the old driver vanishes without releasing (its workers keep the token)
    new = Lease(out, "h", ttl_s=2.0)
    # Its lease file is still live (same pid): expire it as if its driver stopped renewing.
    path = tmp_path / "out" / "_lease" / "00000001.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "expires_at": 0.0}))
    new.acquire()  # waits out the old workers' window before touching the folder
    with pytest.raises(LeaseLostError, match="lost its lease"):
        token.check()
    new.check()


@pytest.mark.usefixtures("ray_cluster")
def test_the_summary_survives_a_failing_final_write(tmp_path: Path) -> None:
    from pipeline.driver import run_job
    from pipeline.preflight import preflight

    shards = write_shards(tmp_path / "shards", num_shards=2, per_shard=1)
    cfg = tiny_config(shards, str(tmp_path / "out"))
    check_output(cfg.output.uri, preflight(cfg).config_hash)  # an output of this job...
    (tmp_path / "out" / "manifest.json").mkdir()  # ...whose final write cannot replace a folder
    with open("/dev/null", "w") as devnull:
        summary = run_job(cfg, max_shards=0, progress_stream=devnull)
    assert summary.write_error is not None and "manifest.json" in summary.write_error
    assert summary.exit_code == 1 and "the manifest was not written" in summary.report()
    assert not (tmp_path / "out" / DONE_DIR).exists()


def test_a_job_covered_by_its_index_resumes_without_listing_its_markers(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    shards = [f"/d/s-{i}.tar" for i in range(4)]
    markers = [_commit(out, s) for s in shards[:3]]
    IndexWriter(out, Storage(), None).compact(markers[:2])
    Path(done_uri(out, shards[1])).write_text("{not json")  # indexed: not read
    listed = []
    real_ls = type(fsspec.filesystem("file")).ls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(fsspec.filesystem("file")), "ls", lambda self, p, *a, **k: listed.append(p) or real_ls(self, p, *a, **k))
        done = load_done(out, Storage(), shards)
    assert sorted(done) == shards[:3] and done[shards[1]]["rows"] == 4  # the unindexed third read itself
    assert not [p for p in listed if p.endswith(DONE_DIR)]  # no listing of the markers
