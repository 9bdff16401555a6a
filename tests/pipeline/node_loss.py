"""A job on a local multi-node Ray cluster (a head without CPUs and two worker nodes with their own
CPUs) whose second worker node is removed mid-job, as a spot preemption takes a machine: its actor
dies with it. Run in its own process (``python -m tests.pipeline.node_loss <folder>``) by
``test_node_loss``, since the suite's session holds another Ray; prints the outcome as JSON."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cluster_of_two_nodes(cpus_per_node: int = 2) -> tuple[Any, Any]:
    """A local multi-node cluster: a head without CPUs and two worker nodes with their own; returns
    (the ``ray.cluster_utils.Cluster``, the worker node to remove)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=cpus_per_node)
    doomed = cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    return cluster, doomed


def preempt_when(count_done: Callable[[], int], at: int, cluster: Any, node: Any) -> dict:
    """Removes ``node`` from ``cluster`` (with its actors and whatever they were computing) once
    ``count_done()`` (shards done so far) reaches ``at``, from a daemon thread; the dict returned
    gets ``after_done``, the count at that moment, also said on stderr."""
    removed: dict = {}

    def preempt() -> None:
        while (done := count_done()) < at:
            time.sleep(0.2)
        removed["after_done"] = done
        cluster.remove_node(node)
        print(f"node removed after {done} shards done", file=sys.stderr, flush=True)

    threading.Thread(target=preempt, daemon=True).start()
    return removed


def main(folder: str) -> dict:
    import ray

    from pipeline.driver import run_job
    from pipeline.io.parts import read_results
    from pipeline.lease import highest
    from pipeline.shards import iter_samples
    from tests.pipeline.conftest import tiny_config
    from tests.shard_factory import write_shards

    shards = write_shards(Path(folder) / "shards", num_shards=10, per_shard=2)
    out = Path(folder) / "out"
    cfg = tiny_config(shards, str(out), "cluster.num_actors=2", "cluster.num_gpus_per_actor=0", "cluster.max_retries=3",
                      "cluster.retry_backoff_s=0.1", "extremal.max_iter=20", "worker.batch_size=1")
    cluster, doomed = cluster_of_two_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    # Once the job is under way.
    removed = preempt_when(lambda: len(list((out / "_done").glob("*.json"))), 3, cluster, doomed)
    t0 = time.monotonic()
    try:
        with open("/dev/null", "w") as devnull:
            summary = run_job(cfg, progress_stream=devnull, startup_timeout_s=120)
    finally:
        ray.shutdown()
        cluster.shutdown()
    table = read_results(str(out), columns=["shard", "key"])
    pairs = Counter(zip(table.column("shard").to_pylist(), table.column("key").to_pylist()))
    expected = Counter((url, s.key) for url in shards for s in iter_samples(url))
    gen, record = highest(str(out))
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "removed_after_done": removed.get("after_done"),
        "ok": summary.ok,
        "every_key_once": pairs == expected,
        "rows": table.num_rows,
        "duplicates": sum(n - 1 for n in pairs.values() if n > 1),
        "retries": summary.retries,
        "replaced_workers": summary.replaced_workers,
        "lease_generation": gen,
        "lease_released": bool(record.get("released")),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
