"""The report and the feature inversion: report build time and peak memory for synthetic outputs of
1,000 and 100,000 rows, and inversion images/s on the CPU.

Report: `tests/report/synthetic.py` writes extremal outputs with the real Parquet schema (parts of
2,000 rows, 16x16 maps, 5 classes); each report is built in a fresh process (`build_report`, 4 rows
drawn per class) whose peak resident memory above its imports is read from /proc/self/status.
Inversion: `extremal_core.inversion.channel_inversions` (original and perturbed, docs/channels.md
settings with --inversion-iters iterations) on the demo CNN at 64x64, B images in one call against
one image per call.

    python benchmarks/bench_report.py --out benchmarks/results/bench_report_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, median, start_run, write_json  # noqa: E402

from tests.report.synthetic import synthetic_rows, write_output  # noqa: E402

_MEASURE = """
import json, sys, time
from pipeline.report import build_report

def status(name):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(name))

base = status("VmRSS:")
t0 = time.monotonic()
build_report([sys.argv[1]], sys.argv[2], per_class=4)
print(json.dumps({"growth_mb": (status("VmHWM:") - base) / 1024, "seconds": time.monotonic() - t0}))
"""


def report_case(rows: int, per_part: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cols = synthetic_rows(rows, seed=3)
        out = write_output(Path(tmp) / "out", cols, np.array_split(np.arange(rows), max(1, rows // per_part)))
        run = subprocess.run([sys.executable, "-c", _MEASURE, str(out), str(Path(tmp) / "report")], capture_output=True,
                             text=True, timeout=1200, cwd=ROOT)
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-2000:])
        r = {"rows": rows, **json.loads(run.stdout.strip().splitlines()[-1])}
    print(f"report of {rows:>7d} rows: {r['seconds']:6.1f} s, peak memory {r['growth_mb']:6.1f} MB above the imports",
          flush=True)
    return r


def inversion_case(images: int, iters: int, repeats: int) -> dict:
    from demo import build_demo_model, ensure_demo_assets, make_synthetic_images, to_model_input
    from extremal_core.inversion import InversionSettings, channel_inversions

    assets = ensure_demo_assets(str(ROOT / "outputs" / "demo_data"), num_threads=1)
    model = build_demo_model(assets.num_classes)
    model.load_state_dict(torch.load(assets.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    x = to_model_input(make_synthetic_images(images, assets.size, assets.num_classes, 12345)[0])
    masks = (torch.rand(images, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    settings = InversionSettings(max_iter=iters, init_scale=0.1)
    batched, single = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        channel_inversions(model, "features.5", x, masks, settings)
        batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(images):
            channel_inversions(model, "features.5", x[i:i + 1], masks[i:i + 1], settings)
        single.append(time.perf_counter() - t0)
    r = {"images": images, "iterations": iters, "batched_images_per_s": images / median(batched),
         "one_by_one_images_per_s": images / median(single)}
    r["ratio"] = r["batched_images_per_s"] / r["one_by_one_images_per_s"]
    print(f"inversion (demo CNN 64x64, features.5, {iters} iterations, original + perturbed): batched "
          f"{r['batched_images_per_s']:.2f} images/s, one by one {r['one_by_one_images_per_s']:.2f} images/s, "
          f"x{r['ratio']:.2f} (B={images})", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument("--rows-per-part", type=int, default=2000)
    p.add_argument("--inversion-images", type=int, default=8)
    p.add_argument("--inversion-iters", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = start_run(args.threads)
    reports = [report_case(int(n), args.rows_per_part) for n in args.sizes.split(",")]
    inversion = inversion_case(args.inversion_images, args.inversion_iters, args.repeats)
    write_json(args.out, {"environment": env, "args": vars(args), "report": reports, "inversion": inversion})


if __name__ == "__main__":
    main()
