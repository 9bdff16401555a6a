"""Throughput of our batched engine (`extremal_core`) vs TorchRay 1.0.0.2 on the same model, settings, images.

TorchRay explains one image at a time (all areas in one batch); ours explains B images x A areas
in one call. Times are wall-clock (`time.perf_counter`) around whole calls; our runs and TorchRay's
are interleaved in every repeat and the medians of the repeats (and of the per-repeat ratios) are
reported, because the machine may be shared.

CPU cases (default):
  small     a small random CNN at 64x64, step 4, sigma 10, areas 0.05/0.1/0.2, preserve/blur,
            --iters iterations (50), B = 1, 8, 32.
  resnet18  torchvision ResNet-18 (random weights) at 224x224, step 7, sigma 21, same areas,
            --resnet-iters iterations (5), B = 1, 8.
TorchRay is timed on --tr-images images per repeat and its time per image is extrapolated
linearly to B images (it handles images independently, one call each).

Each CPU case also prints where one optimization iteration spends its time (forward+backward of
each stage timed on its own): mask generation, perturbation (pyramid blend), network, area
penalty (sort), optimizer step, for our engine (B*A masks) and TorchRay (A masks).

GPU mode (--gpu): ResNet-50 at 224, 3 areas, --gpu-iters (800) iterations, B in --gpu-batches
(8,32,64), optional --autocast bfloat16 and --channels-last; prints images/s, the ratio, the mask
correlation vs TorchRay on the first image, and the model FLOP utilisation (MFU).

On a shared CPU machine use --threads 1 (or export OMP_WAIT_POLICY=PASSIVE before starting):
with several torch threads and OpenMP spin-waiting, a loaded machine makes timings 10-50x slower
and erratic (measured on the 2-core build machine).

    python benchmarks/bench_core.py --threads 1 --out benchmarks/results/bench_core.json
    python benchmarks/bench_core.py --cases small --iters 50 --repeats 5 --threads 1
    python benchmarks/bench_core.py --gpu --autocast bfloat16 --channels-last --out benchmarks/results/bench_gpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    evaluate_masks,
    format_split,
    make_model,
    median,
    pearson,
    run_ours,
    run_torchray,
    smooth_images,
    split_ours,
    split_torchray,
    start_run,
    sync,
    top1_targets,
    write_json,
)

from extremal_core import make_explainer  # noqa: E402
from extremal_core.network import configure_backends  # noqa: E402
from extremal_core.settings import ExtremalSettings  # noqa: E402

AREAS = (0.05, 0.1, 0.2)

CPU_CASES = {
    "small": dict(model="small", size=64, step=4, sigma=10.0, batches=(1, 8, 32)),
    "resnet18": dict(model="resnet18", size=224, step=7, sigma=21.0, batches=(1, 8)),
}

# Dense peak throughput of one H100 SXM (H200: same compute), TFLOP/s.
PEAK_TFLOPS = {"bfloat16": 989.0, "float16": 989.0, "tf32": 494.0, "fp32": 67.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="small,resnet18", help="comma list of CPU cases: small, resnet18")
    p.add_argument("--iters", type=int, default=50, help="iterations for the small CNN case")
    p.add_argument("--resnet-iters", type=int, default=5, help="iterations for the ResNet-18 case")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median taken)")
    p.add_argument("--small-repeats", type=int, default=None, help="repeats for the small case (default --repeats)")
    p.add_argument("--tr-images", type=int, default=None,
                   help="images TorchRay is timed on per repeat (default: 4 small, 2 resnet18, 1 gpu)")
    p.add_argument("--split-reps", type=int, default=5, help="timed iterations for the per-stage split")
    p.add_argument("--no-split", action="store_true", help="skip the per-stage time split")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    g = p.add_argument_group("GPU mode")
    g.add_argument("--gpu", action="store_true", help="run the ResNet-50 GPU benchmark instead of the CPU cases")
    g.add_argument("--device", default="cuda")
    g.add_argument("--gpu-model", default="resnet50")
    g.add_argument("--gpu-size", type=int, default=224)
    g.add_argument("--gpu-iters", type=int, default=800)
    g.add_argument("--gpu-batches", default="8,32,64")
    g.add_argument("--gpu-repeats", type=int, default=1)
    g.add_argument("--autocast", default=None, choices=[None, "bfloat16", "float16"], help="our engine's autocast dtype")
    g.add_argument("--channels-last", action="store_true", help="channels_last model and inputs (our engine)")
    g.add_argument("--max-masks-per-batch", type=int, default=None, help="override our micro-batching")
    g.add_argument("--peak-tflops", type=float, default=None, help="override the peak used for MFU")
    g.add_argument("--no-torchray", action="store_true", help="our engine's numbers only")
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="our engine's compile setting")
    g.add_argument("--tf32", default=None, choices=["on", "off"], help="our engine's tf32 setting (default: torch's)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# CPU


def bench_cpu_case(name, cfg, args):
    iters = args.iters if name == "small" else args.resnet_iters
    repeats = (args.small_repeats or args.repeats) if name == "small" else args.repeats
    n_tr = args.tr_images or (4 if name == "small" else 2)
    batches = cfg["batches"]
    model = make_model(cfg["model"], seed=args.seed)
    images = smooth_images(max(batches), cfg["size"], seed=args.seed)
    targets = top1_targets(model, images)
    step, sigma = cfg["step"], cfg["sigma"]
    print(f"\n=== case {name}: {cfg['model']} {cfg['size']}x{cfg['size']}, step {step}, sigma {sigma}, "
          f"areas {AREAS}, preserve/blur, {iters} iterations, B = {batches}, {repeats} repeats ===")
    print(f"TorchRay is timed on {n_tr} image(s) per repeat, one call per image; its time for B images is "
          f"B x (median time per image), i.e. extrapolated for B > {n_tr}.")
    print("Our time is one extremal_perturbation call on B images (includes its extra clean, fully-perturbed and "
          "final-mask forward passes, which TorchRay does not compute).")

    # warm-up (allocator, caches, first-call costs) for both
    run_ours(model, images[:1], targets[:1], AREAS, 2, step, sigma)
    run_torchray(model, images[:1], targets[:1], AREAS, 2, step, sigma)

    tr_per_image, ours_t = [], {b: [] for b in batches}
    speedups = {b: [] for b in batches}
    for r in range(repeats):
        s, _ = run_torchray(model, images[:n_tr], targets[:n_tr], AREAS, iters, step, sigma)
        tr_img = s / n_tr
        tr_per_image.append(tr_img)
        line = [f"repeat {r + 1}/{repeats}: TorchRay {tr_img:.3f} s/image"]
        for b in batches:
            s, _ = run_ours(model, images[:b], targets[:b], AREAS, iters, step, sigma)
            ours_t[b].append(s)
            speedups[b].append(tr_img * b / s)
            line.append(f"ours B={b} {s:.3f} s")
        print(" | ".join(line), flush=True)

    rows = []
    tr_med = median(tr_per_image)
    print(f"\n{'B':>4} {'ours s/call':>12} {'ours img/s':>11} {'TR s/img':>9} {'TR img/s':>9} "
          f"{'ratio ours/TR':>14} {'(per-repeat med)':>17}  note")
    for b in batches:
        o = median(ours_t[b])
        row = dict(
            case=name, B=b, iters=iters, ours_seconds=o, ours_images_per_s=b / o,
            torchray_seconds_per_image=tr_med, torchray_images_per_s=1 / tr_med,
            ratio=(b / o) / (1 / tr_med), ratio_median_of_repeats=median(speedups[b]),
            torchray_images_timed=n_tr, torchray_extrapolated=b > n_tr,
            ours_seconds_all=ours_t[b], torchray_seconds_per_image_all=tr_per_image,
        )
        rows.append(row)
        note = f"TorchRay extrapolated from {n_tr} image(s)" if b > n_tr else ""
        print(f"{b:>4} {o:>12.3f} {b / o:>11.3f} {tr_med:>9.3f} {1 / tr_med:>9.3f} {row['ratio']:>14.2f} "
              f"{row['ratio_median_of_repeats']:>17.2f}  {note}")

    splits = {}
    if not args.no_split:
        print(f"\nper-iteration time split (median of {args.split_reps}, each stage forward+backward timed separately):")
        tr_split = split_torchray(model, images[:1], targets[0], AREAS, step, sigma, reps=args.split_reps)
        splits["torchray_B1"] = tr_split
        print(f"  TorchRay  1 image  x {len(AREAS)} areas: {format_split(tr_split)}")
        for b in batches:
            sp = split_ours(model, images[:b], targets[:b], AREAS, step, sigma, reps=args.split_reps)
            splits[f"ours_B{b}"] = sp
            print(f"  ours     {b:>2} images x {len(AREAS)} areas: {format_split(sp)}")
        per_img = {k: sum(v.values()) / int(k.split("B")[1]) for k, v in splits.items()}
        print("  per image per iteration: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in per_img.items()))
    return dict(case=name, config=dict(cfg, iters=iters, repeats=repeats, areas=AREAS), rows=rows, splits=splits)


# --------------------------------------------------------------------------------------------
# GPU


def count_flops(model, size, device, channels_last=False):
    """FLOPs of one forward and of one forward + backward-to-the-input (parameters frozen), per image.

    Measured with torch.utils.flop_counter.FlopCounterMode (it counts convolution_backward by its
    output mask, so with frozen weights only the input gradient is counted). The common rule of
    thumb 'training step = 3 x forward' includes weight gradients that this method never computes;
    forward + input-backward is about 2 x forward.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x)
    fwd = fc.get_total_flops()
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    both = fc.get_total_flops()
    return fwd, both


def bench_gpu(args):
    """Our engine first (images/s, MFU, the per-iteration split), then TorchRay on a few images."""
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (or pass --device cpu for a smoke test)")
    batches = [int(b) for b in args.gpu_batches.split(",")]
    size, iters = args.gpu_size, args.gpu_iters
    n_tr = args.tr_images or 1
    model = make_model(args.gpu_model, seed=args.seed).to(dev)
    images = smooth_images(max(batches), size, seed=args.seed, device=dev)
    targets = top1_targets(model, images)
    extra = dict(autocast=args.autocast, channels_last=args.channels_last, compile=args.compile)
    if args.tf32 is not None:
        extra["tf32"] = args.tf32 == "on"
    extra_split = dict(extra)
    if args.max_masks_per_batch:
        extra["max_masks_per_batch"] = args.max_masks_per_batch
    a = len(AREAS)
    flags = configure_backends(ExtremalSettings.from_flat(**{k: v for k, v in extra_split.items()}), dev)

    fwd, both = count_flops(model, size, dev, args.channels_last)
    if args.peak_tflops:
        peak, peak_name = args.peak_tflops, "user"
    elif args.autocast:
        peak, peak_name = PEAK_TFLOPS[args.autocast], args.autocast
    elif dev.type == "cuda" and flags["tf32_cudnn"]:
        peak, peak_name = PEAK_TFLOPS["tf32"], "tf32 (cudnn.allow_tf32, convolutions)"
    else:
        peak, peak_name = PEAK_TFLOPS["fp32"], "fp32"
    print(f"\n=== GPU: {args.gpu_model} {size}x{size}, step 7, sigma 21, areas {AREAS}, {iters} iterations, "
          f"B = {batches}, autocast={args.autocast}, channels_last={args.channels_last}, compile={args.compile}, "
          f"device={dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), backends {flags} ===")
    print(f"FLOPs per mask: forward {fwd / 1e9:.2f} GFLOP, forward+input-backward {both / 1e9:.2f} GFLOP "
          f"({both / fwd:.2f}x forward; FlopCounterMode, frozen weights so no weight gradients; the '3x forward' "
          f"training rule would overstate it). MFU = {both / 1e9:.2f} GFLOP x masks x iterations / wall time / "
          f"peak; model FLOPs only (mask generation, perturbation, sort and the 3 extra forward passes not counted). "
          f"Peak {peak:.0f} TFLOP/s dense ({peak_name}, H100 SXM figures).")

    # Ours first: a short warm-up per B (compiles that batch's shapes), then the timed runs.
    rows, ours_first = [], {}
    print(f"\n{'B':>4} {'ours s':>8} {'img/s':>8} {'MFU %':>6} {'TFLOP/s':>8}  ms/iteration (mask gen / network / rest)",
          flush=True)
    for b in batches:
        # One explainer per B (its network copy is what compiled graphs are specialised to); a
        # 2-iteration run first compiles this B's graphs and runs the memory probe.
        explainer = make_explainer("extremal", model, areas=list(AREAS), max_iter=iters, step=7, sigma=21.0, **extra)
        timed = explainer.settings
        explainer.settings = timed.with_overrides(max_iter=2)
        explainer.run(images[:b], targets[:b])
        explainer.settings = timed
        times = []
        for _ in range(args.gpu_repeats):
            sync(dev)
            start = time.perf_counter()
            res = explainer.run(images[:b], targets[:b])
            sync(dev)
            times.append(time.perf_counter() - start)
        ours_first[b] = (res.masks[0].float().cpu(), res.rewards[0].float().cpu())
        o = median(times)
        tflops = both * b * a * iters / o / 1e12
        row = dict(B=b, iters=iters, ours_seconds=o, ours_images_per_s=b / o, mfu=tflops / peak,
                   achieved_tflops=tflops, ours_seconds_all=times)
        per_iter = o / iters
        split = ""
        if not args.no_split:
            sp = split_ours(model, images[:b], targets[:b], AREAS, 7, 21.0, reps=args.split_reps, settings_extra=extra_split)
            gen_s, net_s = sp["mask_gen"], sp["network"]
            row.update(split=sp, ms_mask_generation=1e3 * gen_s, ms_network=1e3 * net_s,
                       ms_rest=1e3 * (per_iter - gen_s - net_s))
            split = f"{1e3 * gen_s:.1f} / {1e3 * net_s:.1f} / {1e3 * (per_iter - gen_s - net_s):.1f}"
        rows.append(row)
        print(f"{b:>4} {o:>8.2f} {b / o:>8.3f} {100 * row['mfu']:>6.2f} {tflops:>8.1f}  {1e3 * per_iter:.1f} ms = {split}",
              flush=True)
    print("rest = the measured time per iteration minus the two stages timed on their own (perturbation, sort, "
          "optimizer step, and the clean / fully-perturbed / final passes spread over the iterations).")

    result = dict(
        case="gpu", config=dict(model=args.gpu_model, size=size, iters=iters, batches=batches, autocast=args.autocast,
                                channels_last=args.channels_last, compile=args.compile, areas=AREAS, backends=flags),
        flops_forward=fwd, flops_forward_input_backward=both, peak_tflops=peak, peak_name=peak_name, rows=rows,
    )
    if args.no_torchray:
        return result
    # Then TorchRay (fp32, its defaults) on a few images, and the masks compared on image 0.
    run_torchray(model, images[:1], targets[:1], AREAS, 2, 7, 21.0)
    tr_times, tr_outs = [], None
    for _ in range(args.gpu_repeats):
        s, outs = run_torchray(model, images[:n_tr], targets[:n_tr], AREAS, iters, 7, 21.0)
        tr_times.append(s / n_tr)
        tr_outs = tr_outs or outs
    tr_med = median(tr_times)
    print(f"\nTorchRay: {1 / tr_med:.3f} images/s ({n_tr} image(s) x {args.gpu_repeats} repeat(s), fp32)", flush=True)
    tr_mask = tr_outs[0][0].cpu()
    # TorchRay's hist[:, 0, -1] is the reward at its last iteration, of the flipped image when that
    # iteration index is even (odd iteration counts): evaluate its mask with our (unflipped) evaluation.
    tr_reward = evaluate_masks(model, images[:1], targets[0], tr_outs[0][0])
    print(f"{'B':>4} {'ratio ours/TR':>14} {'corr per area (img 0)':>24} {'reward rel.diff per area':>26}")
    for row in rows:
        masks0, rewards0 = ours_first[row["B"]]
        corr = [pearson(masks0[i], tr_mask[i]) for i in range(a)]
        rel = [float((rewards0[i] - tr_reward[i]).abs() / tr_reward[i].abs().clamp(min=1e-6)) for i in range(a)]
        row.update(torchray_images_per_s=1 / tr_med, ratio=row["ours_images_per_s"] * tr_med,
                   corr_first_image=corr, reward_rel_diff_first_image=rel)
        print(f"{row['B']:>4} {row['ratio']:>14.2f} {' '.join(f'{c:.4f}' for c in corr):>24} "
              f"{' '.join(f'{x:.4f}' for x in rel):>26}")
    return dict(result, torchray_seconds_per_image_all=tr_times)


def main(argv=None):
    args = parse_args(argv)
    env = start_run(args.threads)
    start = time.perf_counter()
    results = []
    if args.gpu:
        results.append(bench_gpu(args))
    else:
        for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
            if name not in CPU_CASES:
                raise SystemExit(f"unknown case {name!r}; valid: {', '.join(CPU_CASES)}")
            results.append(bench_cpu_case(name, CPU_CASES[name], args))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    write_json(args.out, dict(environment=env, args=vars(args), results=results))


if __name__ == "__main__":
    main()
