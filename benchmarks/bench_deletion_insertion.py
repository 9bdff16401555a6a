"""Deletion + insertion: images/s of the batched evaluation (`causal_curves`: every (image, step)
pair of a batch in a few large forward passes) against RISE's loop (`CausalMetric.single_run`:
one image, one forward pass per step, transcribed as in the tests), on the same model, images,
saliency maps and step; the curves of the two are checked equal. Ours runs as the pipeline's task
does, on the engine's private copy of the model (BatchNorm folded, channels-last); RISE's loop on
the model as given. The two alternate in each repeat
and the median of the per-repeat ratios is printed.

Cases: `small` (the benchmarks' SmallCNN, random weights, --small-size px) and torchvision
`resnet18`/`resnet50` (random weights, 224 px, step 224 as docs/evaluations.md's protocol). On a CPU keep
them small (`--cases small`); on a GPU add `resnet50`.

    python benchmarks/bench_deletion_insertion.py --threads 1 --cases small \\
        --out benchmarks/results/bench_deletion_insertion_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import make_model, median, smooth_images, start_run, sync, write_json  # noqa: E402

from extremal_core.network import engine_model  # noqa: E402
from extremal_core.settings import ExtremalSettings  # noqa: E402
from pipeline.metrics.deletion_insertion import blur, causal_curves  # noqa: E402


def rise_loop(model, image: torch.Tensor, saliency: torch.Tensor, target: int, mode: str, step: int) -> torch.Tensor:
    """RISE's single_run on one image [1, C, H, W] (on the image's device): one forward per step."""
    _, c, h, w = image.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    if mode == "deletion":
        start, finish = image.clone(), torch.zeros_like(image)
    else:
        start, finish = blur(image), image.clone()
    order = torch.argsort(-saliency.reshape(-1), stable=True)
    scores = torch.empty(n_steps + 1, device=image.device)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = torch.softmax(model(start), dim=1)[0, target]
        if i < n_steps:
            coords = order[step * i : step * (i + 1)]
            start.view(c, hw)[:, coords] = finish.view(c, hw)[:, coords]
    return scores


def run_case(name: str, size: int, n: int, repeats: int, forward_batch: int | None, device: str) -> dict:
    model = make_model(name).to(device)
    ours = engine_model(model, ExtremalSettings())  # as the pipeline's task runs it
    images = smooth_images(n, size, device=device)
    g = torch.Generator().manual_seed(0)
    saliency = torch.rand(n, size, size, generator=g).to(device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    step = size  # one row per step
    batched_t, loop_t, ratios = [], [], []
    max_diff = 0.0
    for rep in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        curves = [causal_curves(ours, images, saliency, targets, m, step=step, forward_batch=forward_batch).curves
                  for m in ("deletion", "insertion")]
        sync(device)
        t1 = time.perf_counter()
        ref = [torch.stack([rise_loop(model, images[i : i + 1], saliency[i], int(targets[i]), m, step) for i in range(n)])
               for m in ("deletion", "insertion")]
        sync(device)
        t2 = time.perf_counter()
        max_diff = max(max_diff, *[float((a - b).abs().max()) for a, b in zip(curves, ref)])
        if rep == 0:
            continue  # warm-up
        batched_t.append(t1 - t0)
        loop_t.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    out = {
        "case": name, "size": size, "images": n, "step": step, "n_steps": (size * size + step - 1) // step,
        "forward_batch": forward_batch, "batched_images_per_s": n / median(batched_t),
        "loop_images_per_s": n / median(loop_t), "speedup": median(ratios), "max_abs_curve_diff": max_diff,
    }
    print(f"{name:<9} {size:>4}px {n:>3} images, {out['n_steps']} steps, deletion+insertion: batched "
          f"{out['batched_images_per_s']:8.2f} images/s, RISE loop {out['loop_images_per_s']:8.2f} images/s, "
          f"x{out['speedup']:.1f} (max |curve diff| {max_diff:.1e})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="small", help="comma-separated: small, resnet18, resnet50")
    p.add_argument("--small-size", type=int, default=64)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forward-batch", type=int, default=None, help="default: causal_curves' (32 on a CPU, 256 on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = start_run(args.threads)
    results = []
    for case in args.cases.split(","):
        size = args.small_size if case == "small" else 224
        results.append(run_case(case, size, args.images, args.repeats, args.forward_batch, args.device))
    write_json(args.out, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
