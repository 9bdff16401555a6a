"""The driver on the session's real local Ray cluster: real actors, real shards, real Parquet.

Every job is tiny (32x32 inputs, 5 iterations): what is tested is dispatch, retries, actor
replacement, quarantine, resume and the manifest, not the algorithm.
"""

from __future__ import annotations

import functools
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.commit import done_uri
from pipeline.config import ConfigError
from pipeline.driver import DriverError, run_job
from pipeline.io.parts import read_results
from pipeline.lease import Lease, OutputBusyError
from pipeline.shards import iter_samples
from pipeline.storage import Storage
from pipeline.worker import ShardWorker
from tests.pipeline.conftest import tiny_config
from tests.pipeline.fault_tasks import FaultyTask, NoRoomTask
from tests.shard_factory import image_samples, member_offsets, truncate_file, upload, write_shard, write_shards

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _keys(shards: list[str], storage: Storage = Storage()) -> list[str]:
    return [s.key for url in shards for s in iter_samples(url, storage)]


def _run(cfg, **kwargs):
    return run_job(cfg, progress_stream=io.StringIO(), tty=False, **kwargs)


def test_gpu_actors_process_every_shard(tmp_path: Path) -> None:
    """2 actors with one logical GPU each over 4 shards: every input row comes out exactly once."""
    shards = write_shards(tmp_path / "shards", num_shards=4, per_shard=3)
    out = str(tmp_path / "out")
    cfg = tiny_config(shards, out, "cluster.num_actors=null", "cluster.num_gpus_per_actor=1")
    summary = _run(cfg)

    assert summary.ok and summary.exit_code == 0, summary.report()
    assert summary.workers == 2  # one per GPU of the cluster
    df = read_results(out).to_pandas()
    assert sorted(df["key"]) == sorted(_keys(shards)) and df["error"].isna().all()
    markers = [json.loads(Path(done_uri(out, s)).read_text()) for s in shards]
    assert {m["device"] for m in markers} == {"cpu"}  # device auto falls back: no CUDA here
    assert {m["cuda_visible_devices"] for m in markers} <= {"0", "1"}  # but Ray did assign a GPU
    manifest = json.loads(Path(out, "manifest.json").read_text())
    assert manifest["summary"] == {"shards": 4, "done": 4, "failed": 0, "rows": 12, "errors": 0}
    assert manifest["config_hash"] == summary.config_hash and manifest["code_version"]
    assert all(e["status"] == "done" and e["attempts"] == 1 for e in manifest["shards"].values())


def test_resume_skips_committed_shards(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=4, per_shard=2)
    out = str(tmp_path / "out")
    cfg = tiny_config(shards, out)

    first = _run(cfg, max_shards=2)  # stops after 2 shards, as if the job had been interrupted
    assert not first.ok and len(first.done) == 2 and len(first.pending) == 2
    committed = {s.url: os.stat(done_uri(out, s.url)).st_mtime_ns for s in first.done}

    second = _run(cfg)
    assert second.ok, second.report()
    assert sorted(s.url for s in second.done if s.resumed) == sorted(committed)
    assert second.images_this_run == 4  # only the 2 remaining shards were computed
    for url, mtime in committed.items():
        assert os.stat(done_uri(out, url)).st_mtime_ns == mtime  # not recomputed
    keys = read_results(out).column("key").to_pylist()
    assert Counter(keys) == Counter(_keys(shards))  # none missing, none duplicated


class CrashingTask(FaultyTask):
    """The actor process exits mid-shard (after its first batch, before anything is committed) on
    the first attempt of a shard named ``shard-000001.tar``."""

    def fault(self, shard_url: str, attempt: int) -> str | None:
        return "kill" if attempt == 1 and shard_url.endswith("shard-000001.tar") else None


def test_killed_actor_is_replaced_and_its_shard_retried(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=4, per_shard=3)
    out = str(tmp_path / "out")
    cfg = tiny_config(shards, out, "worker.batch_size=1")
    summary = _run(cfg, task_class=CrashingTask)

    assert summary.ok, summary.report()
    assert summary.replaced_workers >= 1
    crashed = summary.shards[shards[1]]
    assert crashed.attempts == 2 and crashed.status == "done"
    assert Counter(read_results(out).column("key").to_pylist()) == Counter(_keys(shards))


def test_a_replacement_that_never_starts_stops_the_job_with_its_reason(tmp_path: Path) -> None:
    """The only actor dies and its replacement never starts (as when the cluster lost the room
    for it with a node): after ``startup_timeout_s`` the job stops with one reason, the manifest
    written and the lease released, instead of waiting forever."""
    from pipeline.lease import highest

    shards = write_shards(tmp_path / "shards", num_shards=3, per_shard=2)
    out = str(tmp_path / "out")
    cfg = tiny_config(shards, out, "cluster.num_actors=1", "cluster.max_retries=3")
    task = functools.partial(NoRoomTask, flag=str(tmp_path / "died"))
    with pytest.raises(DriverError, match=r"no worker left: a replacement worker did not start within 10 s .*"
                                          r"run the same command again to resume") as stopped:
        run_job(cfg, task_class=task, progress_stream=io.StringIO(), startup_timeout_s=10)
    assert "shards: " in stopped.value.summary.report()  # what jobs.attribute prints above the error
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["summary"]["done"] < 3
    assert highest(out)[1]["released"]


def test_bad_sample_is_an_error_row_and_the_job_succeeds(tmp_path: Path) -> None:
    samples = image_samples(0, 3)
    samples[1] = {**samples[1], "jpg": b"\x00\x01 corrupt bytes"}
    shards = [write_shard(tmp_path / "shards" / "bad-000000.tar", samples),
              write_shard(tmp_path / "shards" / "good-000000.tar", image_samples(1, 2))]
    out = str(tmp_path / "out")
    summary = _run(tiny_config(shards, out))

    assert summary.ok and summary.exit_code == 0 and summary.errors == 1, summary.report()
    df = read_results(out).to_pandas().set_index("key")
    assert "cannot decode image" in df.loc["s000_0001", "error"]
    assert len(df) == 5


def test_truncated_shard_is_retried_then_quarantined(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=3, per_shard=2)
    bad = shards[1]
    truncate_file(bad, member_offsets(bad)["s001_0001.jpg"][1] + 5)
    out = str(tmp_path / "out")
    summary = _run(tiny_config(shards, out, "cluster.max_retries=1"))

    assert summary.exit_code == 1
    assert list(summary.failures()) == [bad]
    assert "ShardReadError" in summary.failures()[bad] and "truncated" in summary.failures()[bad]
    assert summary.shards[bad].attempts == 2  # first attempt + max_retries
    assert f"FAILED {bad}: ShardReadError" in summary.report()
    manifest = json.loads(Path(out, "manifest.json").read_text())
    assert manifest["shards"][bad]["status"] == "failed" and "truncated" in manifest["shards"][bad]["error"]
    keys = read_results(out).column("key").to_pylist()
    assert sorted(keys) == sorted(_keys([shards[0], shards[2]]))  # the other shards' rows are there


def test_s3_round_trip(tmp_path: Path, s3_server: str, s3_bucket: str, s3_options: dict) -> None:
    local = write_shards(tmp_path / "shards", num_shards=2, per_shard=2)
    remote = [upload(p, f"{s3_bucket}/in/{Path(p).name}", s3_options) for p in local]
    out = f"{s3_bucket}/out"
    cfg = tiny_config(f"{s3_bucket}/in/shard-{{000000..000001}}.tar", out,
                      f"storage.endpoint_url={s3_server}", "storage.connect_timeout_s=5", "storage.max_attempts=2")
    summary = _run(cfg)

    assert summary.ok, summary.report()
    assert sorted(s.url for s in summary.done) == sorted(remote)
    table = read_results(out, Storage(s3_options))
    assert sorted(table.column("key").to_pylist()) == sorted(_keys(local))
    again = _run(cfg)  # everything resumes from the bucket's done-markers
    assert again.ok and all(s.resumed for s in again.done) and again.images_this_run == 0


def test_unreachable_endpoint_fails_the_shards_with_a_clear_reason(tmp_path: Path) -> None:
    cfg = tiny_config("s3://bucket/in/x-{0..1}.tar", str(tmp_path / "out"), "cluster.max_retries=0",
                      "storage.endpoint_url=http://127.0.0.1:9", "storage.connect_timeout_s=1", "storage.max_attempts=1")
    summary = _run(cfg)
    assert summary.exit_code == 1 and len(summary.failed) == 2
    for reason in summary.failures().values():
        assert "ShardReadError" in reason and "127.0.0.1:9" in reason


class NoStartWorker(ShardWorker):
    """A worker whose constructor fails the way a node without the weights would."""

    def __init__(self, *args, **kwargs) -> None:
        raise ValueError("checkpoint not found: /node/nope.pt")


def test_a_worker_that_cannot_start_fails_the_job_with_its_reason(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=1, per_shard=1)
    cfg = tiny_config(shards, str(tmp_path / "out"), "cluster.num_actors=1")
    with pytest.raises(DriverError, match=r"worker failed to start: ValueError: checkpoint not found: .*nope\.pt"):
        _run(cfg, worker_class=NoStartWorker)


def test_a_bad_checkpoint_is_a_config_error_before_anything_is_written(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=1, per_shard=1)
    cfg = tiny_config(shards, str(tmp_path / "out"), "cluster.num_actors=1", f"model.checkpoint={tmp_path}/nope.pt")
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: checkpoint not found: .*nope\.pt"):
        _run(cfg)
    assert not (tmp_path / "out").exists()


def test_the_cluster_must_have_the_gpus_asked_for(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=1, per_shard=1)
    cfg = tiny_config(shards, str(tmp_path / "out"), "cluster.num_gpus_per_actor=4")
    with pytest.raises(DriverError, match="num_gpus_per_actor=4 but the Ray cluster has 2 GPUs"):
        _run(cfg)


def test_more_actors_than_the_cluster_can_host_fail_at_once(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=3, per_shard=1)
    cfg = tiny_config(shards, str(tmp_path / "out"), "cluster.num_actors=8")  # 3 shards: 3 x 1 CPU, the cluster has 2
    start = time.monotonic()
    # The error names the user's value, and what it came to.
    with pytest.raises(DriverError, match=r"num_actors=8 \(3 actors for 3 shards\) x cluster.num_cpus_per_actor=1 needs 3 CPUs "
                       "but the Ray cluster has 2"):
        _run(cfg)
    assert time.monotonic() - start < 60


def test_an_output_in_use_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=1, per_shard=2)
    out = str(tmp_path / "out")
    cfg = tiny_config(shards, out, "cluster.num_actors=1")
    assert _run(cfg).ok
    running = Lease(out, "another-job", 60)
    running.acquire()  # another job is writing this folder now
    for overrides in ((), ("output.overwrite=true", "extremal.max_iter=6")):
        with pytest.raises(OutputBusyError, match="in use by another job"):
            _run(tiny_config(shards, out, "cluster.num_actors=1", *overrides))
    assert read_results(out).num_rows == 2  # nothing deleted, nothing added
    running.release()
    again = _run(cfg)
    assert again.ok and all(s.resumed for s in again.done)


def test_bad_shards_are_quarantined_in_the_manifest_and_missing_ones_not_retried(tmp_path: Path) -> None:
    good = write_shards(tmp_path / "shards", num_shards=1, per_shard=2)[0]
    empty, garbage = tmp_path / "shards" / "empty-000000.tar", tmp_path / "shards" / "garbage-000000.tar"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a tar" * 100)
    missing = str(tmp_path / "shards" / "missing-000000.tar")
    out = str(tmp_path / "out")
    cfg = tiny_config([good, str(empty), str(garbage), missing], out, "cluster.max_retries=1")
    summary = _run(cfg)

    assert summary.exit_code == 1 and [s.url for s in summary.done] == [good]
    manifest = json.loads(Path(out, "manifest.json").read_text())
    assert manifest["summary"] == {"shards": 4, "done": 1, "failed": 3, "rows": 2, "errors": 0}
    for url, attempts in ((str(empty), 2), (str(garbage), 2), (missing, 1)):  # missing: never retried
        entry = manifest["shards"][url]
        assert entry["status"] == "failed" and entry["attempts"] == attempts and "cannot read shard" in entry["error"]
    assert "FileNotFoundError" in manifest["shards"][missing]["error"]


class SlowStartWorker(ShardWorker):
    """A worker whose model takes a while to load."""

    def __init__(self, *args, **kwargs) -> None:
        time.sleep(3)
        super().__init__(*args, **kwargs)


def test_waiting_for_workers_is_said_not_silent(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", num_shards=1, per_shard=1)
    stream = io.StringIO()
    summary = run_job(tiny_config(shards, str(tmp_path / "out"), "cluster.num_actors=1"), worker_class=SlowStartWorker,
                      progress_stream=stream, tty=False, log_interval_s=0.5)
    assert summary.ok
    assert "waiting for 1 of 1 workers to start" in stream.getvalue() and "available now CPU" in stream.getvalue()
