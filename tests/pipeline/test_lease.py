"""pipeline.lease and the one-output-one-config rules of pipeline.commit, without Ray: racing
claimers (threads and a killed process), take-over of a stale lease, fencing of a job that lost
its lease, mixed done-markers, hidden temp files; locally and on the moto S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline.commit import OutputConflictError, check_output, commit_part, load_done, resumable
from pipeline.lease import Lease, LeaseLostError, OutputBusyError, highest, is_live
from pipeline.preflight import preflight
from pipeline.schema import rows_to_table
from pipeline.storage import Storage
from tests.pipeline.conftest import tiny_config
from tests.pipeline.test_schema import extremal_rows as _rows
from tests.shard_factory import image_samples, write_shard

REPO = Path(__file__).resolve().parents[2]


def _race(out: str, storage: Storage, n: int = 8) -> tuple[list[int], list[str]]:
    """``n`` threads take the lease of ``out`` at the same moment: (generations won, errors)."""
    barrier = threading.Barrier(n)
    won: list[int] = []
    errors: list[str] = []

    def claim() -> None:
        lease = Lease(out, "h", 60, storage)
        barrier.wait()
        try:
            won.append(lease.acquire().generation)
        except OutputBusyError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return won, errors


def test_claimers_racing_for_an_empty_folder_exactly_one_wins(tmp_path: Path) -> None:
    won, errors = _race(str(tmp_path / "out"), Storage())
    assert won == [1] and len(errors) == 7
    assert all("in use by another job" in e for e in errors)


def test_claimers_racing_on_s3_exactly_one_wins(s3_bucket: str, s3_options: dict) -> None:
    won, errors = _race(f"{s3_bucket}/out", Storage(s3_options), n=4)
    assert won == [1] and len(errors) == 3


def test_live_lease_refuses_released_and_expired_leases_are_taken_over(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first = Lease(out, "h1", 60)
    first.acquire()
    with pytest.raises(OutputBusyError, match=r"in use by another job .*config h1"):
        Lease(out, "h2", 60).acquire()
    first.release()
    second = Lease(out, "h2", 1.0)
    assert second.acquire().generation == 2  # a released lease is free at once
    time.sleep(1.1)  # second stopped renewing for longer than its TTL
    third = Lease(out, "h3", 60)
    assert third.acquire().generation == 3
    with pytest.raises(LeaseLostError, match="lost its lease"):
        second.check()
    # The superseded job commits nothing: neither part nor marker.
    table = rows_to_table(_rows("/d/s.tar"), "tensor", (3, 8, 8))
    with pytest.raises(LeaseLostError):
        commit_part(out, "/d/s.tar", table, {"config_hash": "h2"}, Storage(), second.token)
    assert load_done(out) == {} and not (tmp_path / "out" / "parts").exists()
    second.release()  # a lost lease's release leaves the new holder's file alone
    assert highest(out)[0] == 3 and is_live(highest(out)[1])


def test_renewal_keeps_a_short_lease(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with Lease(out, "h", 1.0) as lease:
        time.sleep(1.5)  # longer than the TTL: only the renewals keep it
        with pytest.raises(OutputBusyError):
            Lease(out, "other", 1.0).acquire()
        lease.check()
        assert lease.lost is None
    assert not is_live(highest(out)[1])  # released on exit


def test_a_killed_holder_on_this_machine_is_stale_at_once(tmp_path: Path) -> None:
    """A driver killed with SIGKILL never releases its lease; a restart on the same machine does
    not wait for the TTL because the holder's pid is gone."""
    out = str(tmp_path / "out")
    code = (
        "import os, signal, sys; from pipeline.lease import Lease; "
        "Lease(sys.argv[1], 'h', 3600).acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, out], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    gen, record = highest(out)
    assert gen == 1 and not record["released"] and record["expires_at"] > time.time() + 3000
    assert not is_live(record)
    assert Lease(out, "h", 60).acquire().generation == 2


def test_another_machine_s_lease_is_live_until_it_expires(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    record = {"run_id": "x" * 32, "host": "elsewhere", "machine": "elsewhere|?|?", "pid": 1,
              "config_hash": "h", "expires_at": time.time() + 60, "released": False}
    Storage().write_bytes(f"{out}/_lease/00000004.json", json.dumps(record).encode())
    with pytest.raises(OutputBusyError, match="host elsewhere"):
        Lease(out, "h", 60).acquire()
    record["expires_at"] = time.time() - 1
    Storage().write_bytes(f"{out}/_lease/00000004.json", json.dumps(record).encode())
    assert Lease(out, "h", 60).acquire().generation == 5


def test_commit_refuses_a_config_hash_other_than_the_lease_s(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    lease = Lease(out, "job-hash", 60)
    lease.acquire()
    table = rows_to_table(_rows("/d/s.tar"), "tensor", (3, 8, 8))
    with pytest.raises(OutputConflictError, match="checkpoint change"):
        commit_part(out, "/d/s.tar", table, {"config_hash": "worker-hash"}, Storage(), lease.token)
    assert not (tmp_path / "out" / "parts").exists()
    marker = commit_part(out, "/d/s.tar", table, {"config_hash": "job-hash"}, Storage(), lease.token)
    assert marker["rows"] == 4


def test_resume_refuses_markers_of_another_config(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    check_output(out, "a" * 64, False, Storage())
    for shard, h in (("/d/s0.tar", "a" * 64), ("/d/s1.tar", "b" * 64)):
        commit_part(out, shard, rows_to_table(_rows(shard), "tensor", (3, 8, 8)), {"config_hash": h}, Storage())
    with pytest.raises(OutputConflictError, match=r"1 finished shards of another config \(e\.g\. /d/s1\.tar: hash bbbb"):
        resumable(out, "a" * 64, Storage())
    check_output(out, "a" * 64, True, Storage())  # overwrite clears both the markers and config.json
    assert resumable(out, "a" * 64, Storage()) == {} and not (tmp_path / "out" / "parts").exists()


def test_temp_files_are_hidden_from_readers_of_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a reader listing parts/ sees at the moment the part is renamed into place."""
    seen: list[list[str]] = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append(sorted(os.listdir(os.path.dirname(dst))))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    out = str(tmp_path / "out")
    commit_part(out, "/d/s.tar", rows_to_table(_rows("/d/s.tar"), "tensor", (3, 8, 8)), {}, Storage())
    assert seen and all(name.startswith(".") for listing in seen for name in listing)
    assert [p.name for p in (tmp_path / "out" / "parts").iterdir()] == [Path(load_done(out)["/d/s.tar"]["part"]).name]


def test_new_weights_behind_the_same_checkpoint_path_are_another_config(tmp_path: Path) -> None:
    from demo.model import build_demo_model

    ckpt = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(build_demo_model(num_classes=4).state_dict(), ckpt)
    shard = write_shard(tmp_path / "p-000000.tar", image_samples(0, 1))
    cfg = tiny_config(shard, str(tmp_path / "out"), f"model.checkpoint={ckpt}")
    before = preflight(cfg)
    assert before.weights_digest.startswith("sha256:")
    torch.manual_seed(1)
    torch.save(build_demo_model(num_classes=4).state_dict(), ckpt)  # retrained, same path
    after = preflight(cfg)
    assert after.config_hash != before.config_hash
    check_output(cfg.output.uri, before.config_hash, False, Storage())
    with pytest.raises(OutputConflictError, match="another config"):
        check_output(cfg.output.uri, after.config_hash, False, Storage())
