"""timm / transformer models and table inputs: extremal images/s on a ViT-S/16 against ResNet-50,
and the Parquet reader's rows/s and memory.

Models: timm's `vit_small_patch16_224` and torchvision's `resnet50`, random weights, 224x224,
the same extremal settings (`--areas`, `--iters`, step 7, sigma 21) and images; the two alternate
in every repeat and the median of the per-repeat ratios is printed. Short by default (few
iterations): the ratio is per optimisation step, so it holds at the paper's 800.

Reader: an img2dataset-style Parquet file (`key`, `jpg` of tiny JPEGs, row groups of
`--row-group` rows, distinct bytes per row) at each `--rows` count, read by `pipeline.tables.iter_table_samples` (no
decoding) in a fresh process each: rows/s and the process's peak RSS above its baseline, with
Arrow's default memory pool (mimalloc, which keeps freed pages mapped for reuse) and with
`ARROW_DEFAULT_MEMORY_POOL=system` (what the reader itself holds: a record batch at a time).

    python benchmarks/bench_models.py --threads 1 --out benchmarks/results/bench_models_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import median, smooth_images, start_run, write_json  # noqa: E402

from extremal_core import make_explainer  # noqa: E402


def _models() -> dict[str, torch.nn.Module]:
    import timm
    import torchvision

    torch.manual_seed(0)
    return {
        "vit_small_patch16_224": timm.create_model("vit_small_patch16_224", pretrained=False).eval(),
        "resnet50": torchvision.models.resnet50(weights=None).eval(),
    }


def bench_models(args) -> dict:
    models = _models()
    images = smooth_images(args.images, 224)
    targets = torch.arange(args.images) % 1000
    explainers = {name: make_explainer("extremal", m, areas=args.areas, max_iter=args.iters, step=7, sigma=21.0)
                  for name, m in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, explainer in explainers.items():  # alternated: machine load hits both alike
            start = time.perf_counter()
            maps = explainer.explain(images, targets).maps
            seconds[name].append(time.perf_counter() - start)
            assert torch.isfinite(maps).all()
    rate = {name: args.images / median(s) for name, s in seconds.items()}
    ratios = [v / r for v, r in zip(seconds["vit_small_patch16_224"], seconds["resnet50"])]
    print(f"extremal, {args.images} images x {len(args.areas)} areas, {args.iters} iterations, 224x224, "
          f"{torch.get_num_threads()} threads:")
    for name in models:
        print(f"  {name:24s} {rate[name]:.3f} images/s  ({median(seconds[name]):.1f} s per call)")
    print(f"  ViT-S/16 time / ResNet-50 time: {median(ratios):.2f} (median of {len(ratios)} alternated repeats)")
    return {"images_per_s": rate, "seconds": seconds, "vit_over_resnet50_time": median(ratios)}


def write_table(path: str, rows: int, row_group: int) -> int:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    image = buf.getvalue()
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary())])
    # Distinct values (a decoder ignores bytes after the JPEG's end), stored plainly as img2dataset's are.
    with pq.ParquetWriter(path, schema, use_dictionary=False, compression="none") as writer:
        for start in range(0, rows, row_group):
            keys = [f"{i:09d}" for i in range(start, min(rows, start + row_group))]
            jpgs = pa.array([image + k.encode() for k in keys], pa.binary())
            writer.write_table(pa.table({"key": keys, "jpg": jpgs}), row_group_size=row_group)
    return os.path.getsize(path)


def _child(path: str) -> None:
    """Read one table in this fresh process; print rows, seconds and peak RSS above the baseline."""
    from pipeline.storage import Storage
    from pipeline.tables import iter_table_samples

    def rss_mb() -> float:  # resident now (ru_maxrss would hold the imports' peak)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    base = peak = rss_mb()
    start = time.perf_counter()
    rows = 0
    for sample in iter_table_samples(path, Storage(), "jpg", "key"):
        rows += sample.error is None
        if rows % 1000 == 0:
            peak = max(peak, rss_mb())
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": max(peak, rss_mb()) - base}))


def bench_reader(args) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = os.path.join(tmp, f"t{rows}.parquet")
            size = write_table(path, rows, args.row_group)
            for pool in ("mimalloc", "system"):
                env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": pool}
                done = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True,
                                      check=True, env=env)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result.update(file_mb=size / 2**20, rows_per_s=result["rows"] / result["seconds"])
                out[f"{rows}_{pool}"] = result
                print(f"parquet reader, {rows} rows ({size / 2**20:.1f} MB, row groups of {args.row_group}), Arrow pool "
                      f"{pool}: {result['rows_per_s']:,.0f} rows/s, peak RSS +{result['peak_rss_mb']:.1f} MB")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--areas", type=float, nargs="+", default=[0.1])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--row-group", type=int, default=10_000)
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child)
        return
    env = start_run(args.threads)
    payload = {"environment": env, "args": vars(args)}
    if not args.skip_models:
        payload["models"] = bench_models(args)
    payload["reader"] = bench_reader(args)
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
