"""The soak test: 200 one-image shards on the moto S3 server behind the fault-injecting proxy
(2 % of storage requests fail), 2 actors, 5 % of shards hit by an injected worker fault on their
first attempt (an actor killed mid-shard, or a transient exception), a worker node of the first
run's two-node cluster lost (its actor with it), and the driver killed with SIGKILL in the middle
and restarted. The output's key set is the input's, each row once, and
the manifest accounts for every shard and its attempts. Prints its figures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import fsspec
import pytest

from pipeline.driver import run_job
from pipeline.io.parts import read_results
from pipeline.storage import Storage
from tests.fault_proxy import FaultProxy
from tests.pipeline.conftest import tiny_config
from tests.pipeline.fault_tasks import FaultyTask
from tests.shard_factory import image_samples, write_shard

REPO = Path(__file__).resolve().parents[2]
NUM_SHARDS = 200
NODE_LOST_AT = NUM_SHARDS // 6
FAULT_RATE = 0.05


def fault_of(shard_url: str) -> str | None:
    """The fault injected into a shard's first attempt, if any: about FAULT_RATE of shards,
    alternating between killing the actor and raising."""
    h = int(hashlib.sha256(shard_url.encode()).hexdigest()[:8], 16)
    if h % 1000 >= FAULT_RATE * 1000:
        return None
    return "kill" if h % 2 else "raise"


class SoakTask(FaultyTask):
    """Injects ``fault_of(shard)`` after the first batch of a shard's first attempt."""

    def fault(self, shard_url: str, attempt: int) -> str | None:
        return fault_of(shard_url) if attempt == 1 else None


_FIRST_RUN = textwrap.dedent(
    """
    import io, sys
    import fsspec, ray
    from tests.pipeline.conftest import tiny_config
    from tests.pipeline.node_loss import cluster_of_two_nodes, preempt_when
    from tests.pipeline.test_soak import NODE_LOST_AT, SoakTask, count_done, soak_overrides
    from pipeline.driver import run_job
    shards, out, endpoint, direct = sys.argv[1:5]
    cluster, doomed = cluster_of_two_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": direct})
    preempt_when(lambda: count_done(fs, out), NODE_LOST_AT, cluster, doomed)
    run_job(tiny_config(*soak_overrides(shards, out, endpoint)), task_class=SoakTask,
            progress_stream=io.StringIO(), tty=False)
    """
)


def count_done(fs, out: str) -> int:
    """Done-markers under the output ``out`` (``s3://...``) so far."""
    fs.invalidate_cache()
    return len(fs.ls(f"{out[5:]}/_done")) if fs.exists(f"{out[5:]}/_done") else 0


def soak_overrides(shards: str, out: str, endpoint: str) -> list[str]:
    return [shards, out, "method.name=center", f"storage.endpoint_url={endpoint}", "storage.max_attempts=6",
            "storage.connect_timeout_s=5", "cluster.num_actors=2", "cluster.max_retries=3",
            "cluster.retry_backoff_s=0.05", "worker.batch_size=1"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_soak(tmp_path: Path, s3_server: str, s3_bucket: str, s3_options: dict) -> None:
    start = time.monotonic()
    fs = fsspec.filesystem("s3", **s3_options)
    keys = []
    for i in range(NUM_SHARDS):  # written straight to moto (not through the proxy)
        local = write_shard(tmp_path / "shard.tar", image_samples(i, 1))
        fs.put(local, f"{s3_bucket[5:]}/in/soak-{i:06d}.tar")
        keys.append(f"s{i:03d}_0000")
    shards = f"{s3_bucket}/in/soak-{{000000..{NUM_SHARDS - 1:06d}}}.tar"
    out = f"{s3_bucket}/out"
    urls = [f"{s3_bucket}/in/soak-{i:06d}.tar" for i in range(NUM_SHARDS)]
    faults = {u: fault_of(u) for u in urls if fault_of(u)}
    proxy = FaultProxy(s3_server, rate=0.02, seed=5)
    endpoint = proxy.start()
    try:
        # Run 1: a separate driver process on its own two-node Ray, which loses a node once a sixth
        # of the shards are done, and is SIGKILLed once a third are.
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen([sys.executable, "-c", _FIRST_RUN, shards, out, endpoint, s3_server], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                done_first = count_done(fs, out)
                if done_first >= NUM_SHARDS // 3:
                    break
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, f"only {done_first} shards done in time"
                time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started: the group we made
            proc.wait()
        killed_at = time.monotonic() - start
        said = proc.stdout.read().decode()
        node_lost = re.search(r"node removed after (\d+) shards done", said)
        assert node_lost, said[-3000:]  # before the driver was killed

        # Run 2: the same job restarted on the session's cluster resumes and finishes.
        cfg = tiny_config(*soak_overrides(shards, out, endpoint))
        summary = run_job(cfg, task_class=SoakTask, progress_stream=io.StringIO(), tty=False)
    finally:
        proxy.stop()

    assert summary.ok, summary.report()
    table = read_results(out, Storage(s3_options))
    counted = Counter(table.column("key").to_pylist())
    assert set(counted) == set(keys) and set(counted.values()) == {1}  # the input's keys, each once
    manifest = json.loads(fs.cat_file(f"{out[5:]}/manifest.json"))
    assert manifest["summary"] == {"shards": NUM_SHARDS, "done": NUM_SHARDS, "failed": 0, "rows": NUM_SHARDS, "errors": 0}
    attempts = {u: manifest["shards"][u]["attempts"] for u in urls}
    for url in faults:  # an injected fault cost its shard one attempt, in whichever run finished it
        assert attempts[url] >= 2, (url, faults[url], attempts[url])
    resumed = sum(1 for s in summary.done if s.resumed)
    print(
        f"\nsoak: {NUM_SHARDS} shards, {len(faults)} worker faults ({Counter(faults.values())}), storage "
        f"{dict(proxy.counts)}; a node lost after {node_lost[1]} shards; driver killed after {killed_at:.0f} s "
        f"with {resumed} shards done; restart: "
        f"{summary.retries} retries, {summary.replaced_workers} actors replaced; attempts "
        f"{Counter(attempts.values())}; total {time.monotonic() - start:.0f} s"
    )
    assert 0 < resumed < NUM_SHARDS
