"""The pointing game at scale: rows/s and peak memory over synthetic outputs of growing size.

Each size is a synthetic attribution output (`--rows-per-part` rows per Parquet part, one shard of
VOC-format annotations per part: a 64x48 image, one box of the row's class) scored by
`pipeline.evaluation.pointing_run.run_pointing_game` in this process (`use_ray=False`), so the
process's peak resident memory is what the streaming costs. The maps are 48x64 Gaussian bumps
(smooth, like real saliency), half of them on the box. The bar: peak memory flat in the number
of rows (the largest size's peak within a few MB of the smallest's).

    python benchmarks/bench_pointing_game.py --sizes 10000,100000 --out benchmarks/results/bench_pointing_game_cpu.json
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import start_run, write_json  # noqa: E402

from pipeline.datasets.writer import shard_bytes  # noqa: E402
from pipeline.evaluation.pointing_run import run_pointing_game  # noqa: E402
from pipeline.schema import rows_to_table, table_to_parquet_bytes  # noqa: E402

WIDTH, HEIGHT, CLASSES = 64, 48, 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_output(root: Path, rows: int, per_part: int, seed: int = 0) -> None:
    """`rows` rows in parts of `per_part` under root/parts, their shards under root/shards."""
    rng = np.random.default_rng(seed)
    png = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT)).save(png, format="PNG")
    (root / "parts").mkdir(parents=True)
    (root / "shards").mkdir()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for p in range(0, rows, per_part):
        n = min(per_part, rows - p)
        shard = root / "shards" / f"s-{p // per_part:06d}.tar"
        labels = rng.integers(0, CLASSES, n)
        x0, y0 = rng.integers(0, WIDTH - 16, n), rng.integers(0, HEIGHT - 16, n)
        on_box = rng.random(n) < 0.5
        samples, table_rows = [], []
        for i in range(n):
            key = f"{p + i:08d}"
            box = [int(x0[i]) + 1, int(y0[i]) + 1, int(x0[i]) + 16, int(y0[i]) + 16]  # VOC: 1-based, inclusive
            meta = {"format": "voc", "width": WIDTH, "height": HEIGHT, "label": int(labels[i]),
                    "objects": [{"label": int(labels[i]), "box": box, "difficult": False}]}
            samples.append((key, (png.getvalue(), "png", meta)))
            cy, cx = (y0[i] + 8, x0[i] + 8) if on_box[i] else (rng.integers(0, HEIGHT), rng.integers(0, WIDTH))
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 50.0).astype(np.float32)[None]
            table_rows.append({"key": key, "shard": str(shard), "method": "gradient", "target": int(labels[i]),
                               "width": WIDTH, "height": HEIGHT, "maps": bump, "resized_width": WIDTH,
                               "resized_height": HEIGHT, "crop_top": 0, "crop_left": 0})
        shard.write_bytes(shard_bytes(samples))
        part = rows_to_table(table_rows, "tensor", (1, HEIGHT, WIDTH))
        (root / "parts" / f"part-{p // per_part:06d}.parquet").write_bytes(table_to_parquet_bytes(part))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--rows-per-part", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = start_run(args.threads)
    results = []
    base = peak_rss_mb()
    for rows in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            write_output(root, rows, args.rows_per_part)
            made = time.perf_counter() - t0
            before = peak_rss_mb()
            t0 = time.perf_counter()
            game = run_pointing_game(str(root), use_ray=False)
            seconds = time.perf_counter() - t0
            tally = game.tallies[("gradient", "all")]
            scored = sum(tally.hits.values()) + sum(tally.misses.values())
            r = {"rows": rows, "scored": scored, "accuracy": tally.accuracy(), "seconds": seconds, "rows_per_s": rows / seconds,
                 "peak_rss_mb": peak_rss_mb(), "peak_before_mb": before, "write_s": made}
            results.append(r)
            print(f"{rows:>8d} rows ({scored} scored, accuracy {r['accuracy']:.3f}) in {seconds:7.1f} s = "
                  f"{r['rows_per_s']:7.0f} rows/s; "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (before scoring {before:.0f} MB, at start {base:.0f} MB)", flush=True)
    write_json(args.out, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
