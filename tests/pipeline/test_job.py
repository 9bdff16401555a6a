"""``python -m jobs.attribute``: exit codes and messages (in-process, on the session's Ray
cluster), and the demo submitted with ``ray job submit`` to a ``ray start --head`` cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.attribute import main
from pipeline.config_load import dump_config_yaml
from pipeline.io.parts import read_results
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import image_samples, write_shard

REPO = Path(__file__).resolve().parents[2]


def _config_file(tmp_path: Path, *overrides: str) -> str:
    shard = write_shard(tmp_path / "shards" / "job-000000.tar", image_samples(0, 2))
    cfg = tiny_config(shard, str(tmp_path / "out"), *overrides)
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(cfg))
    return str(path)


def test_bad_config_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _config_file(tmp_path)
    assert main(["--config", path, "--set", "extremal.max_iterz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown key 'extremal.max_iterz'") and "\n" not in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    capsys.readouterr()
    # A bad method or method parameter is a config error too, before Ray starts.
    assert main(["--config", path, "--set", "method.name=gradcam"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: method.name: unknown method 'gradcam'") and "\n" not in err
    assert main(["--config", path, "--set", "method.name=center", "--set", "method.radius=3"]) == 2
    assert "unknown key 'method.radius'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.checkpoint={tmp}/missing.pt"], "error: model.checkpoint: checkpoint not found"),
        (["model.checkpoint={tmp}/job.yaml"], "error: model.checkpoint: cannot read checkpoint"),
        (["model.factory=demo.model:nope"], "error: model.factory: factory 'demo.model:nope'"),
        (["model.factory=null", "model.arch=resnet5O"], "error: model.arch: unknown torchvision architecture"),
        (["model.factory=null", "model.arch=resnet18", "model.weights=IMAGENET9K"], "error: model.weights: unknown weights"),
        (["extremal.reward=nope"], "error: extremal.reward: unknown reward 'nope'"),
        (["method.name=extremal_channels", "method.layer=nope"], "error: method.layer: method 'extremal_channels': layer 'nope'"),
        (["input.shards={tmp}/nothing-*.tar"], "error: input.shards: no shards match"),
    ],
)
def test_what_needs_the_model_is_checked_before_ray_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str], expected: str
) -> None:
    """Model, weights, reward, method and shard list: exit 2 with one line naming the key,
    before Ray starts and before the output folder exists (a corrected re-run is not refused)."""
    path = _config_file(tmp_path)
    argv = ["--config", path]
    for o in overrides:
        argv += ["--set", o.format(tmp=tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and "\n" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("ray_cluster")
def test_config_mismatch_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _config_file(tmp_path)
    assert main(["--config", path]) == 0
    out = capsys.readouterr().out
    assert f"output: {tmp_path / 'out'}" in out and "rows: 2 (0 error rows)" in out and "images/s" in out

    assert main(["--config", path, "--set", "extremal.max_iter=6"]) == 1
    err = capsys.readouterr().err
    assert "holds results of another config" in err and "output.overwrite=true" in err
    assert read_results(str(tmp_path / "out")).num_rows == 2  # untouched

    # overwrite deletes the old results (--max-shards 0: claim the output, compute nothing)
    assert main(["--config", path, "--set", "extremal.max_iter=6", "--set", "output.overwrite=true", "--max-shards", "0"]) == 1
    captured = capsys.readouterr()
    assert "another config" not in captured.err and "1 shards not run" in captured.out
    assert not list((tmp_path / "out" / "parts").glob("*.parquet"))


@pytest.mark.usefixtures("ray_cluster")
def test_unreachable_output_fails_fast_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _config_file(tmp_path, "output.uri=s3://bucket/out", "storage.endpoint_url=http://127.0.0.1:9",
                        "storage.connect_timeout_s=1", "storage.max_attempts=1")
    start = time.monotonic()
    assert main(["--config", path]) == 1
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert err.startswith("error: cannot") and "s3://bucket/out" in err and "127.0.0.1:9" in err


# ------------------------------------------------------------------------------------------------
# ray job submit
# ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A separate ``ray start --head --block`` cluster on 127.0.0.1 with the job API (dashboard):
    yields (dashboard URL, environment for ray CLI calls). Every port is a free one and the temp
    dir is private, so it never meets the session's cluster. Stopped by signalling the process we
    started (not ``ray stop``, which would stop every Ray cluster on the machine)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    dash = _free_port()
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dash,
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--ray-client-server-port": _free_port(),
    }
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--temp-dir", temp, "--disable-usage-stats"]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray head did not start: {(Path(temp) / 'head.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started, nothing else
            proc.wait()
        log.close()


@pytest.mark.slow
def test_demo_with_ray_job_submit(ray_head, demo_model_and_data, tmp_path: Path) -> None:
    """docs/cli.md: the same job through ``ray job submit --working-dir .``, then the pointing
    game and deletion/insertion over its output. The demo assets come prebuilt from the session
    fixture (the job finds them cached) and the optimization is shortened; everything else is
    configs/demo.yaml."""
    url, env = ray_head
    assets = demo_model_and_data.assets
    out = tmp_path / "demo_out"
    shards = f"{assets.root}/shards/demo-{{000000..000003}}.tar"
    cmd = ["ray", "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
           sys.executable, "-m", "jobs.demo", "--config", "configs/demo.yaml",
           "--set", f"input.shards={shards}", "--set", f"model.checkpoint={assets.checkpoint}",
           "--set", f"output.uri={out}", "--set", "extremal.max_iter=20"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "shards: 4/4 done" in logs and "rows: 32 (0 error rows)" in logs and "pointing game" in logs
    assert "succeeded" in logs
    table = read_results(str(out))
    assert table.num_rows == 32 and set(table.column("key").to_pylist()) == set(assets.labels)
    # The evaluation jobs over that output, submitted the same way, in one submission (each costs
    # a working-dir upload; Ray quotes the entrypoint's words, hence bash -c).
    evaluations = (f"{sys.executable} -m jobs.pointing_game --results {out} && "
                   f"{sys.executable} -m jobs.deletion_insertion --results {out} --step 256")
    cmd = ["ray", "job", "submit", "--address", url, "--working-dir", str(REPO), "--", "bash", "-c", evaluations]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "succeeded" in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    assert (out / "pointing_game" / "pointing_game.csv").exists()
    assert (out / "deletion_insertion" / "deletion_insertion.csv").exists()


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    "method,extra,num_maps",
    [
        ("center", (), 1),
        ("extremal_channels", ("method.layer=features.8",), 2),
        ("extremal", (), 2),
        ("gradient", (), 1),
        ("guided_backprop", (), 1),
        ("grad_cam", (), 1),
        ("rise", ("method.num_masks=64",), 1),
        ("meaningful_perturbation", ("method.max_iter=3", "method.mask_scale=4"), 1),
    ],
)
def test_every_registered_method_through_the_job(tmp_path: Path, method: str, extra: tuple, num_maps: int) -> None:
    """Each method of the registry end to end: its Parquet read by plain pyarrow and DuckDB."""
    import duckdb
    import pyarrow.parquet as pq

    path = _config_file(tmp_path)
    assert main(["--config", path, "--set", f"method.name={method}", *[a for e in extra for a in ("--set", e)]]) == 0
    table = pq.read_table(tmp_path / "out" / "parts")
    assert table.num_rows == 2 and table.column("error").null_count == 2
    assert set(table.column("method").to_pylist()) == {method}
    if method == "grad_cam":  # the default layer the explainer chose is recorded
        assert set(table.column("layer").to_pylist()) == {"features.11"}
    maps = table.column("maps").combine_chunks().to_numpy_ndarray()  # [N, M, h, w] uint8
    assert maps.shape == (2, num_maps, 32, 32) and maps.dtype.name == "uint8"
    (rows,) = duckdb.sql(
        f"SELECT count(*), min(map_max - map_min) FROM '{tmp_path / 'out' / 'parts'}/*.parquet' WHERE error IS NULL"
    ).fetchall()
    assert rows[0] == 2 and rows[1] > 0


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_driver_interrupted_releases_the_output_and_a_restart_resumes(tmp_path: Path, stop: int, code: int) -> None:
    """A real ``python -m jobs.attribute`` (its own private Ray) stopped with SIGINT or SIGTERM
    after its first shard: the summary is printed with how to resume, the lease is released on the
    way out, and the same command then finishes the job (on the session's cluster), every key
    exactly once."""
    from collections import Counter

    from pipeline.lease import highest
    from pipeline.shards import iter_samples
    from tests.shard_factory import write_shards

    shards = write_shards(tmp_path / "shards", num_shards=6, per_shard=2)
    out = tmp_path / "out"
    cfg = tiny_config(shards, str(out), "cluster.num_actors=1", "extremal.max_iter=60", "worker.batch_size=1")
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and an
    # exec keeps that: the job would never see the signal. It gets the default disposition back.
    proc = subprocess.Popen([sys.executable, "-m", "jobs.attribute", "--config", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not list((out / "_done").glob("*.json")) if (out / "_done").exists() else True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.2)
        proc.send_signal(stop)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started, nothing else
            proc.wait()
    said = proc.stdout.read().decode()
    assert proc.returncode == code, said[-3000:]
    assert "shards: " in said and "run the same command again to resume" in said and "Traceback" not in said
    gen, record = highest(str(out))
    assert gen == 1 and record["released"]  # freed on the way out: no TTL to wait for

    assert main(["--config", str(path)]) == 0
    keys = read_results(str(out)).column("key").to_pylist()
    assert Counter(keys) == Counter(s.key for url in shards for s in iter_samples(url))
    assert highest(str(out))[0] == 2
