"""eMPRT rows/s: what ``pipeline.evaluation.mprt_task`` adds per row once the two attribution jobs
(trained and fully randomized model) have written their maps.

- ``metric_batched``: ``discrete_entropy`` of both maps and ``emprt_scores``, all rows at once;
- ``metric_per_row``: the same numbers one row at a time as Quantus computes them
  (``numpy.histogram`` + ``scipy.stats.entropy``), and their largest difference;
- ``with_outputs``: the batched metric plus the output entropies, one forward pass of each model
  (ResNet-18, random weights, ``--size``²) per image: the task's whole per-row work;
- ``smprt_batched`` / ``smprt_per_row``: sMPRT's comparison (Spearman of |maps|), batched vs
  ``scipy.stats.spearmanr`` per row (the denoised maps themselves cost N x the method's calls).

    python benchmarks/bench_mprt.py --rows 64 --size 224 --threads 1 --out benchmarks/results/bench_mprt_cpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import make_model, print_and_write, start_run, timed  # noqa: E402

from pipeline.metrics.mprt import discrete_entropy, emprt_scores, output_entropy, smprt_similarity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16, help="images per forward pass")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = start_run(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(args.rows, args.size, args.size, generator=g) ** 3  # skewed, like saliency
    maps_random = torch.rand(args.rows, args.size, args.size, generator=g)
    result: dict = {"environment": env, "device": str(dev), "rows": args.rows, "size": args.size}

    m, mr = maps.to(dev), maps_random.to(dev)
    ones = torch.ones(args.rows, dtype=torch.float64, device=dev)
    discrete_entropy(m[:2])  # warm-up
    batched, t = timed(dev, lambda: emprt_scores(discrete_entropy(m), discrete_entropy(mr), ones, 2 * ones)["emprt"])
    result["metric_batched_rows_per_s"] = args.rows / t

    def per_row() -> np.ndarray:
        from scipy.stats import entropy

        a, b = maps.numpy(), maps_random.numpy()
        h = [entropy(np.histogram(x, bins=100)[0]) for x in a]
        hr = [entropy(np.histogram(x, bins=100)[0]) for x in b]
        return (np.array(hr) - np.array(h)) / np.array(h)

    ref, t = timed(dev, per_row)
    result["metric_per_row_rows_per_s"] = args.rows / t
    result["max_abs_diff_batched_vs_per_row"] = float(np.max(np.abs(batched.cpu().numpy() - ref)))
    result["metric_batched_over_per_row"] = result["metric_batched_rows_per_s"] / result["metric_per_row_rows_per_s"]

    model, random = make_model("resnet18", 0).eval().to(dev), make_model("resnet18", 1).eval().to(dev)
    x = torch.rand(args.rows, 3, args.size, args.size, generator=g).to(dev)

    def with_outputs() -> torch.Tensor:
        with torch.no_grad():
            y = torch.cat([output_entropy(model(x[i : i + args.batch])) for i in range(0, args.rows, args.batch)])
            yr = torch.cat([output_entropy(random(x[i : i + args.batch])) for i in range(0, args.rows, args.batch)])
        return emprt_scores(discrete_entropy(m), discrete_entropy(mr), y, yr)["emprt_vs_model"]

    _, t = timed(dev, with_outputs)
    result["with_outputs_rows_per_s"] = args.rows / t

    _, t = timed(dev, lambda: smprt_similarity(m, mr))
    result["smprt_batched_rows_per_s"] = args.rows / t

    def smprt_rows() -> list[float]:
        from scipy.stats import spearmanr

        return [spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0] for a, b in zip(maps.numpy(), maps_random.numpy())]

    _, t = timed(dev, smprt_rows)
    result["smprt_per_row_rows_per_s"] = args.rows / t
    print_and_write(args.out, result)


if __name__ == "__main__":
    main()
