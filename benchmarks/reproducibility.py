"""Are the masks the same on every machine? Pairwise mask correlation between code paths and
under float-rounding-sized noise, for our engine and, beside it, TorchRay against itself.

A measurement, not a test. Our engine runs once per code path:

  native    the compiled CPU loops built for this CPU (`-march=native`)
  portable  the same loops built for any x86-64 CPU (`EXTREMAL_CORE_MARCH=x86-64-v2`)
  pytorch   the PyTorch ops (`native_cpu_kernels=False`), the code GPUs run
  cuda      the PyTorch ops on the GPU (fp32), where one is visible

and each path again with 1e-6 relative noise on the iteration-0 masks (every mask of the first
iteration multiplied by 1 + 1e-6·z, z a fixed Gaussian pattern): a change of the size of float
rounding between two machines. TorchRay runs clean and with the same noise. For every pair of
runs and every area the table gives the median and the minimum over images of the Pearson
correlation of the two masks. Bars: median >= 0.99 and minimum >= 0.95 for every pair of ours.

Cases (areas 0.05 / 0.1 / 0.2 / 0.4, blur):
  demo      the demo CNN (trained on the demo's synthetic shapes, built under ./outputs/demo_data
            on first use) on 16 held-out 64x64 images, step 4, sigma 10, 300 iterations
  resnet18  ResNet-18 with random weights on 2 smooth 112x112 images, step 7, sigma 21, 800
            iterations, targets the clean top-1

    python benchmarks/reproducibility.py --case demo --threads 1 --out benchmarks/results/reproducibility_demo.json
    python benchmarks/reproducibility.py --case resnet18 --threads 1 --out benchmarks/results/reproducibility_resnet18.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    make_model,
    mask_noise,
    run_ours,
    run_torchray,
    smooth_images,
    start_run,
    top1_targets,
    write_json,
)

from extremal_core import cpu_kernels  # noqa: E402
from tests.reproducibility import mask_correlations  # noqa: E402

AREAS = (0.05, 0.1, 0.2, 0.4)
NOISE = 1e-6
MEDIAN_BAR, MIN_BAR = 0.99, 0.95
PATHS = {  # name: (device, native_cpu_kernels, EXTREMAL_CORE_MARCH)
    "native": ("cpu", True, "native"),
    "portable": ("cpu", True, "x86-64-v2"),
    "pytorch": ("cpu", False, None),
    "cuda": ("cuda", False, None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="demo", help="comma list of: demo, resnet18")
    p.add_argument("--paths", default="native,portable,pytorch", help=f"comma list of: {', '.join(PATHS)}")
    p.add_argument("--variant", default="preserve", choices=["preserve", "delete", "dual"])
    p.add_argument("--images", type=int, default=None, help="override the case's image count")
    p.add_argument("--iters", type=int, default=None, help="override the case's iteration count")
    p.add_argument("--no-noise", action="store_true", help="skip the noisy runs")
    p.add_argument("--no-torchray", action="store_true", help="skip TorchRay's control")
    p.add_argument("--tie-tolerance", type=float, default=None, help="override the engine's tie_tolerance")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON results (the table is printed)")
    return p.parse_args(argv)


def demo_case(images: int):
    """(model, images [N, 3, 64, 64], targets, step, sigma, iters) from the demo's assets."""
    from demo import build_demo_model, ensure_demo_assets, make_synthetic_images, to_model_input

    assets = ensure_demo_assets(ROOT / "outputs" / "demo_data", num_threads=1)
    model = build_demo_model(assets.num_classes)
    model.load_state_dict(torch.load(assets.checkpoint, map_location="cpu", weights_only=True))
    pixels, labels, _ = make_synthetic_images(images, assets.size, assets.num_classes, 12345)
    return model.eval(), to_model_input(pixels), [int(v) for v in labels], 4, 10.0, 300


def resnet18_case(images: int):
    model = make_model("resnet18", seed=0)
    x = smooth_images(images, 112, seed=0)
    return model, x, top1_targets(model, x), 7, 21.0, 800


CASES = {"demo": (demo_case, 16), "resnet18": (resnet18_case, 2)}


def run_path(name, noisy, model, images, targets, step, sigma, iters, variant, extra):
    """Masks `[N, A, H, W]` (CPU) of one of our code paths, and its seconds."""
    device, native, march = PATHS[name]
    saved = os.environ.get(cpu_kernels.MARCH_VARIABLE)
    if march:
        os.environ[cpu_kernels.MARCH_VARIABLE] = march
    try:
        build = cpu_kernels.compile_library() if native else None
        with mask_noise("ours", NOISE, first_only=True) if noisy else nullcontext():
            seconds, result = run_ours(model.to(device), images.to(device), targets, AREAS, iters, step, sigma,
                                       variant=variant, native_cpu_kernels=native, **extra)
    finally:
        if saved is None:
            os.environ.pop(cpu_kernels.MARCH_VARIABLE, None)
        else:
            os.environ[cpu_kernels.MARCH_VARIABLE] = saved
        model.to("cpu")
    print(f"  ours {name}{' +noise' if noisy else ''}: {seconds:.1f} s" + (f" ({build.name})" if build else ""),
          flush=True)
    return result.masks.cpu(), seconds


def run_reference(noisy, model, images, targets, step, sigma, iters, variant):
    with mask_noise("torchray", NOISE, first_only=True) if noisy else nullcontext():
        seconds, outs = run_torchray(model, images, targets, AREAS, iters, step, sigma, variant=variant)
    print(f"  TorchRay{' +noise' if noisy else ''}: {seconds:.1f} s", flush=True)
    return torch.stack([m.cpu() for m, _ in outs]), seconds


def correlations(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """Per area, the per-image correlations of masks `[N, A, H, W]`."""
    return mask_correlations(a, b).T.tolist()


def summarize(label, corr):
    """Per area: median and minimum over images (NaN where no image is counted)."""
    per_area = []
    for area, values in zip(AREAS, corr):
        t = torch.tensor(values, dtype=torch.float64)
        median, low = (float(t.median()), float(t.min())) if len(values) else (float("nan"), float("nan"))
        per_area.append(dict(area=area, median=median, min=low, images=len(values), values=list(values)))
    return dict(pair=label, areas=per_area)


def print_table(title, rows, judged):
    print(f"\n{title}")
    print(f"{'pair':<46}" + "".join(f"{'area ' + str(a):>17}" for a in AREAS) + "   verdict")
    print(f"{'':<46}" + "".join(f"{'median / min':>17}" for _ in AREAS))
    for row in rows:
        cells = "".join(f"{r['median']:>10.4f} /{r['min']:>6.3f}" if r["images"] else f"{'(none)':>17}"
                        for r in row["areas"])
        verdict = ""
        if row["pair"] in judged:
            verdict = "PASS" if row["pass"] else "FAIL"
        print(f"{row['pair']:<46}{cells}   {verdict}")


def run_case(case, args):
    make, default_images = CASES[case]
    model, images, targets, step, sigma, iters = make(args.images or default_images)
    iters = args.iters or iters
    print(f"\n== {case}: {images.shape[0]} images {tuple(images.shape[2:])}, step {step}, sigma {sigma}, {iters} "
          f"iterations, areas {AREAS}, {args.variant}/blur, noise {NOISE:g} on the iteration-0 masks", flush=True)
    paths = [p for p in args.paths.split(",") if p]
    if "cuda" in paths and not torch.cuda.is_available():
        print("  no CUDA device visible: the cuda path is skipped")
        paths.remove("cuda")
    masks, seconds = {}, {}
    extra = {} if args.tie_tolerance is None else dict(tie_tolerance=args.tie_tolerance)
    for name, noisy in itertools.product(paths, (False,) if args.no_noise else (False, True)):
        label = name + (" +noise" if noisy else "")
        masks[label], seconds[label] = run_path(name, noisy, model, images, targets, step, sigma, iters, args.variant,
                                                extra)
    ours = list(masks)
    reference = []
    if not args.no_torchray:
        for noisy in (False, True):
            label = "TorchRay" + (" +noise" if noisy else "")
            masks[label], seconds[label] = run_reference(noisy, model, images, targets, step, sigma, iters, args.variant)
            reference.append(label)
    rows = [summarize(f"{x} vs {y}", correlations(masks[x], masks[y])) for x, y in itertools.combinations(ours, 2)]
    judged = {r["pair"] for r in rows}
    for row in rows:
        row["pass"] = all(r["median"] >= MEDIAN_BAR and r["min"] >= MIN_BAR for r in row["areas"])
    if reference:
        rows.append(summarize("TorchRay vs TorchRay +noise", correlations(masks[reference[0]], masks[reference[1]])))
        control = correlations(masks[reference[0]], masks[reference[1]])
        versus = correlations(masks[ours[0]], masks[reference[0]])
        rows.append(summarize(f"{ours[0]} vs TorchRay", versus))
        # where the reference agrees with itself, the answer is well-posed: ours should be the same
        rows.append(summarize(f"{ours[0]} vs TorchRay, where it is stable", [
            [v for v, c in zip(per_image, ctrl) if c >= MEDIAN_BAR] for per_image, ctrl in zip(versus, control)
        ]))
    print_table(f"{case}: per-area mask correlation over {images.shape[0]} images (bars for ours: median >= "
                f"{MEDIAN_BAR}, min >= {MIN_BAR})", rows, judged)
    ok = all(r["pass"] for r in rows if r["pair"] in judged)
    print(f"{case}: {'PASS' if ok else 'FAIL'} for every pair of our runs")
    return dict(case=case, images=images.shape[0], size=list(images.shape[2:]), step=step, sigma=sigma, iters=iters,
                variant=args.variant, targets=targets, rows=rows, seconds=seconds, pass_=ok)


def main(argv=None):
    args = parse_args(argv)
    env = start_run(args.threads)
    start = time.perf_counter()
    results = [run_case(case, args) for case in args.case.split(",")]
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    write_json(args.out, dict(environment=env, args=vars(args), noise=NOISE, areas=AREAS, cases=results))
    return 0 if all(r["pass_"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
