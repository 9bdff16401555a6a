"""The driver at scale: CPU per shard, memory, resume time and object-store requests per shard, at
1k, 10k and 100k shards, fresh and resumed, on local disk and on a local S3 endpoint (moto's
server on 127.0.0.1, in its own process, counting the requests it serves).

The task is a no-op (``NoopTask``: commits an empty part and its done-marker without reading the
shard), so what is measured is the driver, the commit protocol and the lease, not the engine.
"Fresh" runs the job through Ray (2 actors); "resumed" runs it again on the finished output (the
driver lists the done-markers and finds nothing to do). A fresh job of 100k shards takes too long
on a 2-core machine, so its finished output is written directly (``_finished_output``: the
markers and the compacted index a finished job leaves); ``--no-index`` resumes from the markers
alone (a job whose driver was killed before writing its index: every marker read).

Each measurement runs in its own process (memory is the peak RSS above the process's RSS after
``ray.init``). Prints one line per measurement, then the machine and commit.

    python -m benchmarks.bench_driver                      # 1k and 10k fresh, 1k/10k/100k resumed
    python -m benchmarks.bench_driver --sizes 1000 --fresh-max 1000 --storage s3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FACTORY = "tests.pipeline.factories:seeded_demo_model"  # the same weights in every process
BUCKET = "bench"


# ------------------------------------------------------------------------------------------------
# The no-op task and the job
# ------------------------------------------------------------------------------------------------


class NoopTask:
    """Commits an empty part and its marker for each shard, reading nothing (the shards need not
    exist): the driver's and the commit protocol's cost alone."""

    def __init__(self, cfg: Any, device: Any) -> None:
        self.cfg, self.name, self.output_hash = cfg, "noop", None

    def run(self, shard_url: str, ctx: Any) -> dict[str, Any]:
        from pipeline.commit import commit_part
        from pipeline.schema import rows_to_table

        stats = {"attempts": ctx.attempt, "images": 0, "seconds": 0.0, "config_hash": ctx.lease.config_hash}
        return commit_part(self.cfg.output.uri, shard_url, rows_to_table([], "tensor", None), stats, ctx.storage, ctx.lease)


def job_config(n: int, out: str, endpoint: str | None) -> Any:
    from pipeline.config_load import load_config

    root = f"s3://{BUCKET}/shards" if endpoint else "/nonexistent/shards"
    sets = [f"input.shards={root}/shard-{{000000..{n - 1:06d}}}.tar", f"output.uri={out}", f"model.factory={FACTORY}",
            "model.num_classes=4", "model.preprocessing.resize=null", "model.preprocessing.crop=32",
            "method.name=center", "cluster.num_actors=2", "cluster.num_cpus_per_actor=1",
            "cluster.num_gpus_per_actor=0"]
    if endpoint:
        sets += [f"storage.endpoint_url={endpoint}"]
    return load_config(None, sets)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def child(n: int, out: str, endpoint: str | None) -> dict[str, Any]:
    """One run of the job in this process: seconds, driver CPU, memory above the start."""
    import ray

    from pipeline.driver import run_job
    from pipeline.preflight import preflight

    cfg = job_config(n, out, endpoint)
    checked = preflight(cfg)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        base_kb = _rss_kb("VmRSS:")
        t0, c0 = time.monotonic(), time.process_time()
        with open(os.devnull, "w") as devnull:
            summary = run_job(cfg, checked=checked, task_class=NoopTask, progress_stream=devnull, log_interval_s=1e9)
        seconds, cpu = time.monotonic() - t0, time.process_time() - c0
    finally:
        ray.shutdown()
    peak_kb = max(_rss_kb("VmHWM:"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    resumed = sum(1 for s in summary.done if s.resumed)
    return {"done": len(summary.done), "resumed": resumed, "seconds": seconds, "cpu_s": cpu,
            "mem_mb": (peak_kb - base_kb) / 1024, "hash": summary.config_hash}


# ------------------------------------------------------------------------------------------------
# A finished output written directly (for sizes too large to run fresh here)
# ------------------------------------------------------------------------------------------------


def _finished_output(n: int, out: str, endpoint: str | None, chash: str, index: bool) -> None:
    from pipeline.commit import CONFIG_JSON, DONE_DIR, OWNER, done_uri
    from pipeline.done_index import INDEX_DIR, KEPT
    from pipeline.shards import expand_shards

    cfg = job_config(n, out, endpoint)
    files: dict[str, bytes] = {CONFIG_JSON: json.dumps({"config_hash": chash, "written_by": OWNER}).encode()}
    lines = []
    for url in expand_shards(cfg.input.shards):
        marker = {"shard": url, "part": "parts/x.parquet", "config_hash": chash, "attempts": 1, "rows": 0,
                  "errors": 0, "images": 0, "seconds": 0.0, "committed_at": time.time()}
        files[f"{DONE_DIR}/{done_uri(out, url).rpartition('/')[2]}"] = json.dumps(marker).encode()
        lines.append(json.dumps({k: marker[k] for k in KEPT}))
    if index:
        files[f"{INDEX_DIR}/00000000000000000001-bench-000001.jsonl"] = ("\n".join(lines) + "\n").encode()
    if endpoint:
        prefix = out[len(f"s3://{BUCKET}/"):]
        _post(endpoint, "/__populate__", {"bucket": BUCKET, "objects": {f"{prefix}/{k}": v.decode() for k, v in files.items()}})
        return
    for name, data in files.items():
        path = Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ------------------------------------------------------------------------------------------------
# The S3 endpoint: moto's server, counting requests, able to be filled without one PUT per object
# ------------------------------------------------------------------------------------------------


def serve_moto(port: int) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.models import s3_backends
    from werkzeug.serving import make_server

    counts: Counter[str] = Counter()
    app = DomainDispatcherApplication(create_backend_app)

    def counting(environ: dict, start_response: Any) -> Any:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path in ("/__requests__", "/__populate__"):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if path == "/__populate__":
                req = json.loads(body)
                backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
                for key, value in req["objects"].items():
                    backend.put_object(req["bucket"], key, value.encode())
                answer = {}
            else:
                answer = dict(counts)
                if json.loads(body or b"{}").get("reset"):
                    counts.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(answer).encode()]
        query = environ.get("QUERY_STRING", "")
        counts["LIST" if method == "GET" and ("list-type" in query or "prefix=" in query) else method] += 1
        return app(environ, start_response)

    make_server("127.0.0.1", port, counting, threaded=True).serve_forever()


def _post(endpoint: str, path: str, payload: dict) -> dict:
    req = urllib.request.Request(endpoint + path, data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_driver", "--serve-moto", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            _post(endpoint, "/__requests__", {})
            break
        except OSError:
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    return proc, endpoint


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def _run_child(n: int, out: str, endpoint: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_driver", "--child", str(n), out] + ([endpoint] if endpoint else [])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def _line(storage: str, n: int, kind: str, r: dict[str, Any], requests: dict[str, int] | None) -> str:
    text = (f"{storage:5s} {n:>7d} shards {kind:17s} {r['seconds']:7.1f} s  driver CPU {1000 * r['cpu_s'] / n:6.3f} ms/shard"
            f"  memory +{r['mem_mb']:6.0f} MB  ({r['done']} done, {r['resumed']} resumed)")
    if requests is not None:
        total = sum(requests.values())
        text += f"  S3 requests {total / n:5.2f}/shard {dict(sorted(requests.items()))}"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--fresh-max", type=int, default=10000, help="largest size run fresh through Ray")
    p.add_argument("--storage", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    p.add_argument("--no-index", action="store_true", help="also resume written outputs without their index")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--serve-moto", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_moto:
        serve_moto(args.serve_moto)
        return 0
    if args.child:
        n, out, *endpoint = args.child
        print(json.dumps(child(int(n), out, endpoint[0] if endpoint else None)))
        return 0

    from pipeline.commit import current_code_version
    from pipeline.preflight import preflight

    moto, endpoint = start_moto() if "s3" in args.storage else (None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_driver_") as tmp:
            for storage in args.storage:
                ep = endpoint if storage == "s3" else None
                for n in args.sizes:
                    variants = [("fresh", True)] if n <= args.fresh_max else [("written", True)]
                    if args.no_index:
                        variants.append(("written, no index", False))
                    for kind, index in variants:
                        out = (f"s3://{BUCKET}/out-{n}-{len(kind)}" if ep else f"{tmp}/out-{n}-{len(kind)}")
                        if kind == "fresh":
                            if ep:
                                _post(ep, "/__requests__", {"reset": True})
                            r = _run_child(n, out, ep)
                            req = _post(ep, "/__requests__", {"reset": True}) if ep else None
                            print(_line(storage, n, "fresh", r, req), flush=True)
                        else:
                            chash = preflight(job_config(n, out, ep)).config_hash
                            _finished_output(n, out, ep, chash, index)
                        if ep:
                            _post(ep, "/__requests__", {"reset": True})
                        r = _run_child(n, out, ep)
                        req = _post(ep, "/__requests__", {"reset": True}) if ep else None
                        print(_line(storage, n, f"resumed ({kind})" if kind != "fresh" else "resumed", r, req), flush=True)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; code {current_code_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
