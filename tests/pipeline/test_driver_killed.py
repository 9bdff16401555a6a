"""A real ``python -m jobs.attribute`` killed with SIGKILL mid-run: with its own private Ray, no
process of that Ray remains a few seconds later; connected to a cluster (``RAY_ADDRESS``), the
cluster lives on. Either way the suite's own cluster still runs tasks afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from pipeline.config_load import dump_config_yaml
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import write_shards

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 20  # generous for a loaded 2-core machine; the time taken is printed


@ray.remote(num_cpus=0)
def _alive() -> int:
    return os.getpid()


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("ray_of_its_own", [True, False], ids=["private-ray", "connected"])
def test_driver_killed_mid_run(tmp_path: Path, ray_of_its_own: bool) -> None:
    import psutil  # Ray's copy, importable once ray is

    shards = write_shards(tmp_path / "shards", num_shards=12, per_shard=2)
    out = tmp_path / "out"
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(tiny_config(shards, str(out), "cluster.num_actors=1", "worker.batch_size=1")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    if not ray_of_its_own:
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # the suite's cluster
    proc = subprocess.Popen([sys.executable, "-m", "jobs.attribute", "--config", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "_done").exists() or not any((out / "_done").iterdir()):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.1)
        started = psutil.Process(proc.pid).children(recursive=True)  # the keeper, Ray's servers, workers
        names = {p.pid: p.name() for p in started}
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.kill()  # the driver alone, as the OOM killer or `kill -9 <pid>` does
        killed = time.monotonic()
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started, nothing else
            proc.wait()

    def left() -> list[str]:
        alive = []
        for p in started:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {names[p.pid]}")
            except psutil.NoSuchProcess:
                pass
        return alive

    while left() and time.monotonic() - killed < GONE_WITHIN_S:
        time.sleep(0.1)
    print(f"\n{len(started)} processes under the driver, gone {time.monotonic() - killed:.1f} s after the kill")
    assert not left(), left()
    if ray_of_its_own:
        assert "raylet" in names.values()  # it did start its own Ray
    else:
        assert not started  # a connected driver starts no Ray process
    assert ray.get(_alive.remote(), timeout=60)  # the suite's cluster is untouched
