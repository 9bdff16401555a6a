"""Nodes dying: a worker node of a local multi-node Ray cluster removed mid-job (its actor dies
with it). Every key comes out once, the lost shards are retried on the other node, no row is
duplicated, and the job keeps its lease throughout (one generation, released at the end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_worker_node_lost_mid_job(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "tests.pipeline.node_loss", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-4000:]
    got = json.loads(lines[-1])
    print(got)  # the figures, for the record (pytest -s)
    assert got["ok"] and got["every_key_once"] and got["duplicates"] == 0 and got["rows"] == 20, got
    assert got["replaced_workers"] >= 1 and got["retries"] >= 1, got  # the node's shards ran again elsewhere
    assert got["lease_generation"] == 1 and got["lease_released"], got  # one lease, held to the end
