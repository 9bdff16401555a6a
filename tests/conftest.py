"""Shared fixtures: a real S3 endpoint (moto's server in its own process) and real WebDataset
shards on disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Ray 2.60 turns token auth on for local clusters; the tests run their own, unauthenticated.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# pytest and the Ray workers share two cores: spinning OpenMP threads would starve each other.
# Set before torch is first imported (below), and inherited by the workers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests.fixtures_demo import demo_model_and_data  # noqa: F401  (session fixture)
from tests.shard_factory import write_shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 (a separate process) and yield its endpoint URL.

    Sets dummy ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION`` for the
    session (not ``AWS_ENDPOINT_URL``: tests pass the endpoint explicitly, see ``s3_options``).
    """
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {endpoint} within 30 s") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_options(s3_server: str) -> dict[str, Any]:
    """fsspec storage options for the moto endpoint, with short timeouts."""
    return {
        "client_kwargs": {"endpoint_url": s3_server},
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}},
    }


@pytest.fixture
def make_bucket(s3_server: str) -> Callable[[str | None], str]:
    """Factory: create a fresh bucket on the moto server, return ``s3://<name>``."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def make(name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    return make


@pytest.fixture
def s3_bucket(make_bucket: Callable[[str | None], str]) -> str:
    """A fresh, empty bucket: ``s3://<name>``."""
    return make_bucket(None)


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., list[str]]:
    """Factory: ``make_shards(num_shards=2, per_shard=3, fmt="jpg", subdir="shards")`` writes real
    tar shards under ``tmp_path/subdir`` and returns their paths."""

    def make(
        num_shards: int = 2, per_shard: int = 3, fmt: str = "jpg", subdir: str = "shards", prefix: str = "shard"
    ) -> list[str]:
        return write_shards(tmp_path / subdir, num_shards, per_shard, fmt, prefix)

    return make
