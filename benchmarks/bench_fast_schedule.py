"""`schedule="fast"` against the paper schedule, worst case first (issue #22, item 6).

The engine's own `schedule="fast"` (a third of the passes) and the paper schedule run on the same
images; every mask is compared with its paper-schedule twin. The images are a fresh draw of
`demo.make_synthetic_images` (`--seed`, default 31337: neither the demo's images nor the 2024 draw
the schedule was chosen on, nor bench_schedule.py's 12345); the models are bench_schedule.py's
two, trained here (the demo CNN and a small torchvision-block ResNet). Areas 0.05 / 0.1 / 0.2,
step 4, sigma 10, blur, preserve and delete.

Printed per model and variant, per area: the minimum (and median) over images of the masks'
Pearson correlation; the worst per-image loss of v_a (the normalised preserved score, the
`scores` column: paper minus fast, positive = fast worse); for delete also the worst loss of the
deletion objective itself, (Φ_min - Φ(x with the mask's region blurred)) / (Φ_0 - Φ_min); pointing
hits (bench_schedule.pointing_hits). `--noise-floor` adds a second paper-schedule run on the
images plus 1e-6 Gaussian noise: the same numbers between two runs of the *same* schedule, what
no schedule can beat. The bar: >= 2.9x fewer passes, minimum correlation >= 0.9 at every area,
per-image v_a loss <= 0.05, hits not lower.

    python benchmarks/bench_fast_schedule.py --threads 1 --noise-floor \\
        --out benchmarks/results/bench_fast_schedule_cpu.json | tee benchmarks/results/bench_fast_schedule_cpu.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, pearson, start_run, write_json  # noqa: E402
from bench_schedule import AREAS, build_model, pointing_hits  # noqa: E402

from demo import make_synthetic_images, to_model_input  # noqa: E402
from extremal_core import extremal_perturbation  # noqa: E402

BAR = {"speedup": 2.9, "min_corr": 0.9, "va_loss": 0.05}


def run(model, images, targets, variant: str, schedule: str) -> dict:
    r = extremal_perturbation(model, images, targets, areas=list(AREAS), step=4, sigma=10.0, variant=variant,
                              schedule=schedule)
    span = (r.phi0 - r.phi_min)[:, None]
    # the variant's own objective: v_a for preserve; for delete how far the deletion pulls Φ down
    objective = r.scores if variant == "preserve" else (r.rewards + r.phi_min[:, None]) / span
    return {"masks": r.masks, "va": r.scores, "objective": objective, "passes": float(r.iterations.sum(1).float().mean())}


def compare(run_: dict, ref: dict, boxes) -> dict:
    b = run_["masks"].shape[0]
    corr = torch.tensor([[pearson(run_["masks"][i, j], ref["masks"][i, j]) for j in range(len(AREAS))] for i in range(b)])
    return {
        "passes": run_["passes"],
        "speedup": ref["passes"] / run_["passes"],
        "corr_min": corr.min(0).values.tolist(),
        "corr_median": [median(c.tolist()) for c in corr.T],
        "va_loss_max": float((ref["va"] - run_["va"]).max()),
        "objective_loss_max": float((ref["objective"] - run_["objective"]).max()),
        "hits": sum(pointing_hits(run_["masks"], boxes)),
        "hits_paper": sum(pointing_hits(ref["masks"], boxes)),
    }


def meets_bar(row: dict) -> bool:
    return (row["speedup"] >= BAR["speedup"] and min(row["corr_min"]) >= BAR["min_corr"]
            and row["va_loss_max"] <= BAR["va_loss"] and row["hits"] >= row["hits_paper"])


def line(name: str, row: dict) -> str:
    corr = " | ".join(f"{mn:.3f} ({md:.3f})" for mn, md in zip(row["corr_min"], row["corr_median"]))
    return (f"{name:>22}  {row['speedup']:5.2f}x  {corr}  {row['va_loss_max']:+.3f}  {row['objective_loss_max']:+.3f}  "
            f"{row['hits']:2d}/{row['hits_paper']:2d}  {'MEETS BAR' if meets_bar(row) else ''}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo,resnet")
    p.add_argument("--variants", default="preserve,delete")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--noise-floor", action="store_true", help="also the paper schedule against itself under 1e-6 noise")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = start_run(args.threads)
    pixels, labels, boxes = make_synthetic_images(args.images, 64, 4, args.seed)
    images, targets = to_model_input(pixels), torch.as_tensor(labels)
    noisy = images + 1e-6 * torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    payload = {"environment": env, "seed": args.seed, "images": args.images, "areas": AREAS, "bar": BAR, "rows": {}}
    print(f"{'':>22}  {'less':>6}  corr min (median) @ " + " | ".join(f"{a:<13}" for a in AREAS)
          + "  v_a loss  objective loss  hits")
    for model_name in args.models.split(","):
        model, _ = build_model(model_name, 1200)
        for variant in args.variants.split(","):
            print(f"--- {model_name}, {variant}", flush=True)
            ref = run(model, images, targets, variant, "paper")
            rows = {"fast": compare(run(model, images, targets, variant, "fast"), ref, boxes)}
            if args.noise_floor:
                rows["paper, 1e-6 noise"] = compare(run(model, noisy, targets, variant, "paper"), ref, boxes)
            for name, row in rows.items():
                print(line(name, row), flush=True)
            payload["rows"][f"{model_name}/{variant}"] = rows
            write_json(args.out, payload)


if __name__ == "__main__":
    main()
