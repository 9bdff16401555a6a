"""Object storage that fails intermittently: a fault-injecting proxy (tests/fault_proxy.py) on
127.0.0.1 in front of the moto server fails 10 % of requests, before or after the server acted.
botocore's retries (``storage.max_attempts``, with backoff) and the driver's shard retries absorb
them: the job's output is exactly its input, once."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest

from pipeline.driver import run_job
from pipeline.io.parts import read_results
from pipeline.lease import Lease
from pipeline.shards import iter_samples
from pipeline.storage import Storage
from tests.fault_proxy import FaultProxy
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import upload, write_shards


@pytest.fixture
def flaky_s3(s3_server: str):
    proxy = FaultProxy(s3_server, rate=0.10, seed=12)
    endpoint = proxy.start()
    yield proxy, endpoint
    proxy.stop()


def test_lease_survives_an_ambiguous_create(flaky_s3, s3_bucket: str, s3_options: dict) -> None:
    """Every create-if-absent that the server performed but answered with 500 is retried by
    botocore, gets 412, and must still be recognised as ours."""
    proxy, endpoint = flaky_s3
    opts = {**s3_options, "client_kwargs": {"endpoint_url": endpoint},
            "config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}
    proxy.rate = 0.5
    for i in range(6):
        lease = Lease(f"{s3_bucket}/out{i}", "h", 60, Storage(opts))
        assert lease.acquire().generation == 1
    assert proxy.counts["after"] > 0


@pytest.mark.usefixtures("ray_cluster")
def test_intermittent_storage_faults_are_retried_and_the_output_is_exact(
    tmp_path: Path, flaky_s3, s3_server: str, s3_bucket: str, s3_options: dict
) -> None:
    proxy, endpoint = flaky_s3
    local = write_shards(tmp_path / "shards", num_shards=4, per_shard=2)
    for p in local:
        upload(p, f"{s3_bucket}/in/{Path(p).name}", s3_options)  # directly, not through the proxy
    out = f"{s3_bucket}/out"
    cfg = tiny_config(f"{s3_bucket}/in/shard-{{000000..000003}}.tar", out, f"storage.endpoint_url={endpoint}",
                      "storage.max_attempts=6", "storage.connect_timeout_s=5", "cluster.max_retries=3")
    summary = run_job(cfg, progress_stream=io.StringIO(), tty=False)

    assert summary.ok, summary.report()
    assert proxy.counts["before"] + proxy.counts["after"] > 0, proxy.counts
    keys = read_results(out, Storage(s3_options)).column("key").to_pylist()
    assert Counter(keys) == Counter(s.key for p in local for s in iter_samples(p))
    print(f"\nstorage faults: {dict(proxy.counts)}; shard retries: {summary.retries}")
