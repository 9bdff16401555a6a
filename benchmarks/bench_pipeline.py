"""The pipeline (Ray actors reading WebDataset shards, writing Parquet) against ``extremal_core``
alone on the same images, settings and core, plus the output size per image (issue #13's bar:
one actor at >= 0.95 of the engine alone, in-shard and end to end, on shards of 64 images at 224²).

Two cases, each run both ways in one process:

  224   224x224 images (synthetic, JPEG in tar shards), torchvision mobilenet_v3_small with random
        weights (the cheapest torchvision classifier, so the pipeline's share is the largest),
        areas 0.05/0.1/0.2, step 7, sigma 21 (the paper's), --iters224 iterations at learning rate
        0.1; --shards224 shards x --n224 images (4 x 64).
  demo  the demo shards and trained model (configs/demo.yaml: 64x64, 3 areas, step 4), --iters
        iterations; 4 shards x 8 images: a job so small that the worker's start dominates.

"engine alone" = this process, ``--threads`` torch threads (1), the images decoded and
preprocessed and the targets picked beforehand (not timed), ``extremal_perturbation`` on batches
of ``worker.batch_size``. "pipeline" = ``run_job`` on a local Ray cluster with --actors CPU actors
of 1 CPU each (1 torch thread), timed from the call to its return: preflight, the actor's start
(process, imports, model), shard reading and decoding, the clean forward pass that picks the
targets, Parquet encoding, commits and the manifest (Ray's own start is printed apart).
"in-shard" divides the images by the actors' busy time (the shards' seconds / actors).

Two views of the overhead: the ratio to the engine-alone run (a separate run, so it carries the
machine's run-to-run noise, a few %), and the engine's share of the same run's time (the rows'
``seconds`` column is each batch's engine time), which has no such noise. ``--pin-core C`` puts
this process and every Ray process it starts on core C: the reader thread, Parquet encoding and
Ray's own threads then compete with the engine for that core, as the bar asks ("on the same
core"); without it a 2-core machine lends them the other core. ``--repeats`` alternates the
engine-alone and pipeline runs and prints the median ratios.

    python benchmarks/bench_pipeline.py --pin-core 1 --out benchmarks/results/bench_pipeline_cpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, environment  # noqa: E402

from demo import ensure_demo_assets, make_synthetic_images  # noqa: E402
from extremal_core import extremal_perturbation  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.config_load import load_config  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.readahead import read_items  # noqa: E402
from pipeline.shards import expand_shards  # noqa: E402


def _write_tar(path: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> str:
    """A WebDataset shard of JPEG images with ``cls`` labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (img, label) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            for ext, data in (("jpg", buf.getvalue()), ("cls", str(int(label)).encode())):
                info = tarfile.TarInfo(f"{prefix}_{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def demo_config(work: Path, iters: int, batch: int) -> JobConfig:
    assets = ensure_demo_assets(ROOT / "outputs" / "demo_data", num_threads=1)
    return load_config(
        str(ROOT / "configs" / "demo.yaml"),
        [
            f"input.shards=[{','.join(assets.shards)}]",
            f"model.checkpoint={assets.checkpoint}",
            f"output.uri={work / 'out_demo'}",
            "output.overwrite=true",
            f"extremal.max_iter={iters}",
            f"worker.batch_size={batch}",
        ],
    )


def config_224(work: Path, iters: int, n: int, shards: int, batch: int) -> JobConfig:
    images, labels, _ = make_synthetic_images(shards * n, size=224, num_classes=4, seed=3)
    urls = [_write_tar(work / "shards224" / f"s224-{s:06d}.tar", images[s * n : (s + 1) * n],
                       labels[s * n : (s + 1) * n], f"s{s}")
            for s in range(shards)]
    return load_config(
        None,
        [
            f"input.shards=[{','.join(urls)}]",
            "model.arch=mobilenet_v3_small",
            "model.num_classes=10",
            "model.preprocessing.resize=null",
            "model.preprocessing.crop=224",
            "targets.mode=top1",
            "extremal.areas=[0.05,0.1,0.2]",
            f"extremal.max_iter={iters}",
            "extremal.learning_rate=0.1",
            f"worker.batch_size={batch}",
            f"output.uri={work / 'out_224'}",
            "output.overwrite=true",
        ],
    )


def core_alone(cfg: JobConfig, threads: int) -> dict:
    """extremal_core on the job's images in one process: images/s of the engine calls only."""
    torch.set_num_threads(threads)
    loaded = load_model(cfg.model, "cpu")
    items = [it for url in expand_shards(cfg.input.shards) for it in read_items(url, loaded.preprocess, cfg.input.label_key)]
    x = torch.stack([it.x for it in items])
    with torch.no_grad():
        logits = loaded.model(x)
    if cfg.targets.mode == "label":
        targets = torch.tensor([it.label for it in items])
    else:
        targets = logits.argmax(1)
    bs = cfg.worker.batch_size
    start = time.perf_counter()
    for lo in range(0, len(items), bs):
        extremal_perturbation(loaded.model, x[lo : lo + bs], targets[lo : lo + bs], settings=cfg.extremal)
    seconds = time.perf_counter() - start
    return {"images": len(items), "seconds": round(seconds, 3), "images_per_s": len(items) / seconds}


def stage_breakdown(cfg: JobConfig, threads: int) -> dict:
    """Where one shard's time goes besides the engine, in this process on one thread, each stage
    timed on its own (seconds per image): reading and decoding + preprocessing, the clean forward
    pass that picks the targets, the engine, the rows -> Arrow table, the Parquet encoding."""
    from extremal_core.rewards import class_scores
    from pipeline.method import build_explainer, explain_in_chunks
    from pipeline.schema import rows_to_table, table_to_parquet_bytes
    from pipeline.tasks import map_shape

    torch.set_num_threads(threads)
    loaded = load_model(cfg.model, "cpu")
    explainer = build_explainer(cfg, loaded.model)
    url = expand_shards(cfg.input.shards)[0]
    t = {}
    start = time.perf_counter()
    items = list(read_items(url, loaded.preprocess, cfg.input.label_key))
    t["read_decode_preprocess"] = time.perf_counter() - start
    x, bs = torch.stack([it.x for it in items]), cfg.worker.batch_size
    start = time.perf_counter()
    with torch.no_grad():
        targets = torch.cat([class_scores(loaded.model(x[lo : lo + bs])).argmax(1) for lo in range(0, len(x), bs)])
    t["target_forward"] = time.perf_counter() - start
    start = time.perf_counter()
    rows = explain_in_chunks(explainer, x, targets, bs, cfg.method.card)
    t["engine"] = time.perf_counter() - start
    rows = [{"key": it.key, "target": int(k), **r, **it.geometry.columns()} for it, k, r in zip(items, targets, rows)]
    shape = map_shape(loaded.preprocess, explainer, rows)
    # The first table of a process imports pandas (pyarrow does, on its first array): once per
    # worker, so timed apart from the per-image cost.
    first = time.perf_counter()
    rows_to_table(rows[:1], cfg.output.map_format, shape, cfg.method.card)
    first = time.perf_counter() - first
    start = time.perf_counter()
    table = rows_to_table(rows, cfg.output.map_format, shape, cfg.method.card)
    t["rows_to_table"] = time.perf_counter() - start
    start = time.perf_counter()
    table_to_parquet_bytes(table)
    t["parquet_encode"] = time.perf_counter() - start
    per_image = {k: v / len(items) for k, v in t.items()}
    besides = sum(v for k, v in per_image.items() if k != "engine")
    print("per image: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_image.items())
          + f" | besides the engine {besides * 1000:.1f} ms = {besides / per_image['engine']:.1%} of the engine"
          + f" | once per worker: the first table {first:.2f} s", flush=True)
    return {"images": len(items), "seconds_per_image": per_image, "besides_engine_share": besides / per_image["engine"],
            "first_table_s": first}


def cpu_config(cfg: JobConfig, actors: int) -> JobConfig:
    return replace(cfg, cluster=replace(cfg.cluster, num_actors=actors, num_gpus_per_actor=0.0, num_cpus_per_actor=1.0,
                                        device="cpu"))


def worker_start(cfg: JobConfig) -> float:
    """Seconds from asking Ray for one worker actor to its model being loaded (process, imports,
    model, method): the fixed cost a job pays once per actor."""
    import ray

    from pipeline.worker import ShardWorker

    start = time.perf_counter()
    handle = ray.remote(ShardWorker).options(num_cpus=1).remote(cpu_config(cfg, 1))
    ray.get(handle.ready.remote())
    seconds = time.perf_counter() - start
    ray.kill(handle)
    return seconds


def pipeline_run(cfg: JobConfig, actors: int) -> dict:
    from pipeline.driver import run_job
    from pipeline.io.parts import read_results

    cfg = cpu_config(cfg, actors)
    start = time.perf_counter()
    summary = run_job(cfg, progress_stream=io.StringIO(), tty=False)
    seconds = time.perf_counter() - start
    if not summary.ok:
        raise RuntimeError(summary.report())
    busy = sum(s.seconds for s in summary.done) / actors
    parts = list(Path(cfg.output.uri, "parts").glob("*.parquet"))
    part_bytes = sum(p.stat().st_size for p in parts)
    table = read_results(cfg.output.uri, columns=["key", "maps", "seconds"])
    per_row = table.column("seconds").to_numpy()
    engine = float(np.sum(per_row)) / actors
    # A fresh worker's first batch (the first keys: the first shard's) against the rest: warm-up.
    first = per_row[np.argsort(table.column("key").to_numpy(zero_copy_only=False))[: cfg.worker.batch_size]]
    return {
        "images": summary.images_this_run,
        "rows": summary.rows,
        "seconds": round(seconds, 3),
        "busy_seconds": round(busy, 3),
        "engine_seconds": round(engine, 3),
        "images_per_s": summary.images_this_run / seconds,
        "in_shard_images_per_s": summary.images_this_run / busy,
        "engine_share_in_shard": engine / busy,
        "engine_share_end_to_end": engine / seconds,
        "first_batch_s_per_image": float(np.mean(first)),
        "median_s_per_image": float(np.median(per_row)),
        "parquet_bytes": part_bytes,
        "bytes_per_image": part_bytes / summary.rows,
        "raw_mask_bytes_per_image": table.column("maps").nbytes / summary.rows,
    }


def _median(values: list[float]) -> float:
    return float(np.median(values))


def run_case(cfg: JobConfig, counts: list[int], repeats: int, threads: int) -> dict:
    """Engine alone and the pipeline, alternated ``repeats`` times; per-run numbers and medians."""
    stages = stage_breakdown(cfg, threads)
    start_s = worker_start(cfg)
    print(f"worker start (actor process, imports, model, method): {start_s:.2f} s", flush=True)
    entry: dict = {"stages": stages, "worker_start_s": start_s, "core": [], "pipeline": {a: [] for a in counts}}
    for r in range(repeats):
        core = core_alone(cfg, threads)
        entry["core"].append(core)
        print(f"[{r + 1}/{repeats}] engine alone ({threads} thread): {core['images']} images in {core['seconds']:.1f} s "
              f"= {core['images_per_s']:.3f} images/s", flush=True)
        for actors in counts:
            pipe = pipeline_run(cfg, actors)
            pipe["ratio_end_to_end"] = pipe["images_per_s"] / core["images_per_s"]
            pipe["ratio_in_shard"] = pipe["in_shard_images_per_s"] / core["images_per_s"]
            entry["pipeline"][actors].append(pipe)
            print(f"[{r + 1}/{repeats}] pipeline ({actors} actor(s) x 1 CPU): {pipe['images']} images in "
                  f"{pipe['seconds']:.1f} s (busy {pipe['busy_seconds']:.1f} s, engine {pipe['engine_seconds']:.1f} s) | "
                  f"vs engine alone: {pipe['ratio_in_shard']:.3f} in-shard, {pipe['ratio_end_to_end']:.3f} end to end | "
                  f"engine share of this run: {pipe['engine_share_in_shard']:.3f} in-shard, "
                  f"{pipe['engine_share_end_to_end']:.3f} end to end | engine per image: first batch "
                  f"{pipe['first_batch_s_per_image']:.3f} s, median {pipe['median_s_per_image']:.3f} s", flush=True)
    for actors, runs in entry["pipeline"].items():
        medians = {k: _median([p[k] for p in runs]) for k in
                   ("ratio_in_shard", "ratio_end_to_end", "engine_share_in_shard", "engine_share_end_to_end")}
        entry[f"median_{actors}"] = medians
        print(f"median over {repeats} ({actors} actor(s)): vs engine alone {medians['ratio_in_shard']:.3f} in-shard, "
              f"{medians['ratio_end_to_end']:.3f} end to end | engine share {medians['engine_share_in_shard']:.3f} "
              f"in-shard, {medians['engine_share_end_to_end']:.3f} end to end", flush=True)
    last = runs[-1]
    print(f"output: {last['bytes_per_image'] / 1024:.1f} KB per image in Parquet "
          f"({last['raw_mask_bytes_per_image'] / 1024:.1f} KB of raw uint8 masks)", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=50, help="iterations, demo case")
    p.add_argument("--iters224", type=int, default=10, help="iterations, 224 case")
    p.add_argument("--n224", type=int, default=64, help="images per shard, 224 case")
    p.add_argument("--shards224", type=int, default=4, help="shards, 224 case")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--actors", default="1", help="actor counts to run the pipeline with, e.g. 2,1")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the engine-alone run")
    p.add_argument("--repeats", type=int, default=2, help="engine-alone / pipeline pairs, alternated")
    p.add_argument("--pin-core", type=int, default=None, help="run everything (this process, Ray) on this core")
    p.add_argument("--cases", default="224,demo")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.actors.split(",")]
    if args.pin_core is not None:
        # Before Ray starts: its daemons and workers inherit this process's affinity.
        os.sched_setaffinity(0, {args.pin_core})

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    env = {**environment(), "ray": ray.__version__, "affinity": sorted(os.sched_getaffinity(0))}
    print(f"environment: {env}")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
    env["ray_init_s"] = round(time.perf_counter() - t0, 2)
    print(f"ray.init (local, {max(counts)} CPUs): {env['ray_init_s']} s (not in the pipeline times)")

    results: dict = {"environment": env, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        work = Path(tmp)
        for case in args.cases.split(","):
            if case == "demo":
                cfg = demo_config(work, args.iters, args.batch)
                desc = f"demo 64x64, {len(cfg.extremal.optim.areas)} areas, {args.iters} iterations, 4 shards x 8 images"
            elif case == "224":
                cfg = config_224(work, args.iters224, args.n224, args.shards224, args.batch)
                desc = (f"224x224 mobilenet_v3_small, 3 areas, {args.iters224} iterations (lr 0.1), "
                        f"{args.shards224} shards x {args.n224} images")
            else:
                raise SystemExit(f"unknown case {case!r}")
            print(f"\n=== {case}: {desc} ===", flush=True)
            results["cases"][case] = {"description": desc, **run_case(cfg, counts, args.repeats, args.threads)}
    ray.shutdown()
    env["loadavg_after"] = os.getloadavg()
    print(f"\nloadavg after: {env['loadavg_after']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
