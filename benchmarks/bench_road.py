"""ROAD's noisy linear imputation: images/s batched on one device vs one image at a time.

Three ways to impute the same (image, fraction) pairs (MoRF at the reference's seven fractions):
- ``batched``: ``pipeline.metrics.road.linear_impute`` on every pair at once (chunks of ``--chunk``);
- ``one_cg``: the same conjugate gradients, one pair at a time;
- ``one_spsolve``: one pair at a time by ``scipy.sparse.linalg.spsolve`` on the reference's
  system (what tleemann/road_evaluation's ``NoisyLinearImputer`` does per image), assembled here
  vectorised so that the solve, not Python, is timed.
An "image" below is one image's seven imputations. Also prints the largest difference between
the batched float32 result and spsolve's.

    python benchmarks/bench_road.py --images 4 --size 224 --out benchmarks/results/bench_road_cpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_and_write, smooth_images, start_run, timed  # noqa: E402

from pipeline.metrics.road import FRACTIONS, NEIGHBOURS, linear_impute, removal_masks  # noqa: E402


def spsolve_impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The reference's system for ``img`` [C, H, W], ``removed`` [H, W], solved by spsolve."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = img.shape
    unknown = np.flatnonzero(removed.ravel())
    var = -np.ones(h * w, dtype=np.int64)
    var[unknown] = np.arange(len(unknown))
    ys, xs = np.divmod(unknown, w)
    flat = img.reshape(c, -1)
    rows, cols, vals = [np.arange(len(unknown))], [np.arange(len(unknown))], []
    diag = np.zeros(len(unknown))
    rhs = np.zeros((len(unknown), c))
    for (dy, dx), weight in NEIGHBOURS:
        yy, xx = ys + dy, xs + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        diag[inside] -= weight
        j = np.where(inside, yy * w + xx, 0)
        free = inside & (var[j] >= 0)
        rows.append(np.flatnonzero(free))
        cols.append(var[j[free]])
        vals.append(np.full(int(free.sum()), weight))
        fixed = inside & (var[j] < 0)
        np.subtract.at(rhs, np.flatnonzero(fixed), weight * flat[:, j[fixed]].T)
    a = coo_matrix((np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(unknown), len(unknown))).tocsc()
    out = flat.copy()
    out[:, unknown] = np.asarray(spsolve(a, rhs)).reshape(len(unknown), c).T
    return out.reshape(c, h, w)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--chunk", type=int, default=28, help="pairs per batched call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-spsolve", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = start_run(args.threads)
    dev = torch.device(args.device)
    images = smooth_images(args.images, args.size).to(dev)
    sal = images.sum(1) + 0.01 * torch.rand(images.shape[0], args.size, args.size, device=dev)
    masks = removal_masks(sal, FRACTIONS, "morf").view(-1, args.size, args.size)  # [B * F, H, W]
    nf = len(FRACTIONS)
    src = images.repeat_interleave(nf, dim=0)
    n = src.shape[0]
    result: dict = {"environment": env, "device": str(dev), "images": args.images, "size": args.size, "pairs": n}

    linear_impute(src[:1], masks[:1], noise=0.0)  # warm-up
    batched, t = timed(dev, lambda: torch.cat([linear_impute(src[i : i + args.chunk], masks[i : i + args.chunk], noise=0.0)
                                          for i in range(0, n, args.chunk)]))
    result["batched_images_per_s"] = args.images / t
    _, t = timed(dev, lambda: [linear_impute(src[i : i + 1], masks[i : i + 1], noise=0.0) for i in range(n)])
    result["one_cg_images_per_s"] = args.images / t
    if not args.skip_spsolve:
        cpu_src, cpu_masks = src.double().cpu().numpy(), masks.cpu().numpy()
        ref, t = timed(dev, lambda: [spsolve_impute(cpu_src[i], cpu_masks[i]) for i in range(n)])
        result["one_spsolve_images_per_s"] = args.images / t
        result["max_abs_diff_batched_vs_spsolve"] = float(np.max(np.abs(batched.double().cpu().numpy() - np.stack(ref))))
        result["batched_over_spsolve"] = result["batched_images_per_s"] / result["one_spsolve_images_per_s"]
    result["batched_over_one_cg"] = result["batched_images_per_s"] / result["one_cg_images_per_s"]
    print_and_write(args.out, result)


if __name__ == "__main__":
    main()
