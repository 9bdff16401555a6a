"""End-to-end throughput of the pipeline (Ray actors reading shards, writing Parquet) vs
``extremal_core`` alone on the same images, settings and machine, plus the output size per image.

Two cases, each run both ways in one process:

  demo  the demo shards and trained model (configs/demo.yaml: 64x64, 3 areas, step 4), --iters
        iterations; 4 shards x 8 images.
  224   224x224 images (synthetic, JPEG in tar shards), torchvision mobilenet_v3_small with random
        weights (cheapest torchvision classifier), areas 0.05/0.1/0.2, step 7, sigma 21 (the
        paper's), --iters224 iterations at learning rate 0.1 so that the masks reach the
        area-constrained blob shapes of a converged run (their content sets the compressed size);
        2 shards x --n224 images. This case measures the SPEC bar: <= 20 KB per image for 3 areas.

"core alone" = one process, ``--threads`` torch threads (1), the images decoded and preprocessed
beforehand (not timed), ``extremal_perturbation`` on batches of ``worker.batch_size``.
"pipeline" = ``run_job`` on a local Ray cluster with --actors (2, then 1) CPU actors of 1 CPU each (1 torch
thread each), timed from the call to its return (actor start, model load, shard reading, decoding,
Parquet commit included; Ray's own start excluded and printed apart). "in-shard" divides the
images by the actors' mean busy time (the sum of the shards' seconds / actors): the throughput
once actors are up. With 2 actors on 2 free cores the ideal pipeline/core ratio is ~2; a shared
machine (see loadavg) gives less.

    python benchmarks/bench_pipeline.py --out benchmarks/results/bench_pipeline.json
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


def config_224(work: Path, iters: int, n: int, batch: int) -> JobConfig:
    images, labels, _ = make_synthetic_images(2 * n, size=224, num_classes=4, seed=3)
    shards = [_write_tar(work / "shards224" / f"s224-{s:06d}.tar", images[s * n : (s + 1) * n],
                         labels[s * n : (s + 1) * n], f"s{s}")
              for s in range(2)]
    return load_config(
        None,
        [
            f"input.shards=[{','.join(shards)}]",
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


def pipeline_run(cfg: JobConfig, actors: int) -> dict:
    from pipeline.driver import run_job
    from pipeline.results import read_results

    cluster = replace(cfg.cluster, num_actors=actors, num_gpus_per_actor=0.0, num_cpus_per_actor=1.0, device="cpu")
    cfg = replace(cfg, cluster=cluster)
    start = time.perf_counter()
    summary = run_job(cfg, progress_stream=io.StringIO(), tty=False)
    seconds = time.perf_counter() - start
    if not summary.ok:
        raise RuntimeError(summary.report())
    busy = sum(s.seconds for s in summary.done) / actors
    parts = list(Path(cfg.output.uri, "parts").glob("*.parquet"))
    part_bytes = sum(p.stat().st_size for p in parts)
    table = read_results(cfg.output.uri, columns=["maps"])
    mask_bytes = table.column("maps").nbytes
    return {
        "images": summary.images_this_run,
        "rows": summary.rows,
        "seconds": round(seconds, 3),
        "images_per_s": summary.images_this_run / seconds,
        "in_shard_images_per_s": summary.images_this_run / busy,
        "parquet_bytes": part_bytes,
        "bytes_per_image": part_bytes / summary.rows,
        "raw_mask_bytes_per_image": mask_bytes / summary.rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=50, help="iterations, demo case")
    p.add_argument("--iters224", type=int, default=20, help="iterations, 224 case")
    p.add_argument("--n224", type=int, default=4, help="images per shard, 224 case (2 shards)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--actors", default="2,1", help="actor counts to run the pipeline with (1 shows the per-actor overhead)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the core-alone run")
    p.add_argument("--cases", default="demo,224")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.actors.split(",")]

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    env = {**environment(), "ray": ray.__version__}
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
                desc = f"demo 64x64, {len(cfg.extremal.areas)} areas, {args.iters} iterations"
            elif case == "224":
                cfg = config_224(work, args.iters224, args.n224, args.batch)
                desc = f"224x224 mobilenet_v3_small, 3 areas, {args.iters224} iterations (lr 0.1)"
            else:
                raise SystemExit(f"unknown case {case!r}")
            print(f"\n=== {case}: {desc} ===", flush=True)
            core = core_alone(cfg, args.threads)
            print(f"core alone ({args.threads} thread): {core['images']} images in {core['seconds']:.1f} s = "
                  f"{core['images_per_s']:.3f} images/s", flush=True)
            entry = {"description": desc, "core": core, "pipeline": {}}
            for actors in counts:
                pipe = pipeline_run(cfg, actors)
                ratio = pipe["images_per_s"] / core["images_per_s"]
                ratio_in = pipe["in_shard_images_per_s"] / core["images_per_s"]
                print(f"pipeline ({actors} actors x 1 CPU): {pipe['images']} images in {pipe['seconds']:.1f} s = "
                      f"{pipe['images_per_s']:.3f} images/s end to end, {pipe['in_shard_images_per_s']:.3f} images/s "
                      f"in-shard | ratio pipeline/core {ratio:.2f} end to end, {ratio_in:.2f} in-shard", flush=True)
                entry["pipeline"][actors] = {**pipe, "ratio_end_to_end": ratio, "ratio_in_shard": ratio_in}
            print(f"output: {pipe['bytes_per_image'] / 1024:.1f} KB per image in Parquet "
                  f"({pipe['raw_mask_bytes_per_image'] / 1024:.1f} KB of raw uint8 masks); bar 20 KB at 224 with 3 areas")
            results["cases"][case] = entry
    ray.shutdown()
    env["loadavg_after"] = os.getloadavg()
    print(f"\nloadavg after: {env['loadavg_after']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
