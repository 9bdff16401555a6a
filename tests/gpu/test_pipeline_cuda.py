"""The demo job (configs/demo.yaml) with one GPU actor: ``python -m jobs.attribute`` in a
subprocess, which starts its own local Ray, so Ray sees the machine's real GPU (the session
cluster of tests/pipeline/conftest.py declares two logical GPUs, wrong on a one-GPU machine).
The demo shards and checkpoint come prebuilt from the session fixture, as in
tests/pipeline/test_job.py::test_demo_with_ray_job_submit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The bare GPU machine of benchmarks/gpu_check.sh has no Ray or WebDataset: the engine's GPU
# tests run there, this one where the pipeline's dependencies are installed.
pytest.importorskip("ray")
pytest.importorskip("webdataset")

from pipeline.commit import load_done  # noqa: E402
from pipeline.io.parts import read_results  # noqa: E402

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


def test_demo_job_on_one_gpu_actor(demo_model_and_data, tmp_path: Path) -> None:
    assets = demo_model_and_data.assets
    out = tmp_path / "demo_gpu"
    shards = "[" + ",".join(f"'{s}'" for s in assets.shards) + "]"
    cmd = [sys.executable, "-m", "jobs.demo", "--config", "configs/demo.yaml",
           "--set", "cluster.device=cuda", "--set", "cluster.num_gpus_per_actor=1", "--set", "cluster.num_actors=1",
           "--set", f"input.shards={shards}", "--set", f"model.checkpoint={assets.checkpoint}",
           "--set", f"output.uri={out}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # a private cluster for this run, never a shared one
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]

    # One row per image (targets.mode: label), none with an error.
    table = read_results(str(out))
    assert table.num_rows == len(assets.labels), logs[-2000:]
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    assert not errors, errors[:3]
    assert set(table.column("key").to_pylist()) == set(assets.labels)
    # The actor really computed on the GPU: each shard's done-marker records the device.
    markers = load_done(str(out))
    assert len(markers) == len(assets.shards)
    devices = [m["device"] for m in markers.values()]
    assert all(d.startswith("cuda") for d in devices), devices
