"""CPU proxies for the engine's GPU efficiency, measured with the profiler (no GPU needed).

- syncs per iteration: `aten::_local_scalar_dense` (a tensor read into a Python number: `.item()`,
  `float(t)`, `bool(t)`) and `aten::nonzero` (a size known only after the kernel ran) per
  optimization iteration of the PyTorch-ops path (the path GPUs run); each is a host sync on CUDA.
- aten ops per iteration: every `aten::` op the profiler records, a proxy for kernel launches.
- bytes allocated per mask per iteration of the mask generator (forward + backward), at 224²,
  B = 32, A = 3 (96 masks): the sum of the allocations the profiler records, over the masks;
  the bar is 8·H·W·4 bytes. For the reference PyTorch ops and, where present, the fused map
  compiled by torch.compile (`extremal_core/fused_masks.py`).
- graph breaks of the iteration's forward (mask generation, perturbation, network, reward, area
  penalty) under `torch._dynamo.explain`.

The script uses only calls that existed before the fused generator, so it runs on older commits
too (that is how the "before" column of benchmarks/README.md was made):

    python benchmarks/bench_gpu_proxies.py --out benchmarks/results/gpu_proxies.json
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _common import start_run, write_json  # noqa: E402

from extremal_core import area as area_module  # noqa: E402
from extremal_core.masks import SmoothMaskGenerator  # noqa: E402
from extremal_core.network import engine_model  # noqa: E402
from extremal_core.optimize import model_scores, optimize_masks, variant_inputs, variant_reward  # noqa: E402
from extremal_core.perturbation import build_pyramid  # noqa: E402
from extremal_core.rewards import get_reward  # noqa: E402
from extremal_core.settings import ExtremalSettings  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")
AREAS = (0.05, 0.1, 0.2)


def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).eval()


def op_counts(settings: ExtremalSettings, size: int, images: int) -> Counter:
    model = engine_model(tiny_cnn(), settings)
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimize_masks(model, x, torch.arange(images), get_reward("simple"), settings)
    return Counter(e.name for e in prof.events())


def per_iteration(size: int = 32, images: int = 2) -> dict:
    """Syncs and aten ops per iteration: the difference of a 6- and a 2-iteration run over 4."""
    base = ExtremalSettings.from_flat(areas=AREAS, step=4, sigma=10.0, native_cpu_kernels=False)
    short, long = (op_counts(base.with_overrides(max_iter=n), size, images) for n in (2, 6))
    syncs = {name: (long[name] - short[name]) / 4 for name in SYNC_OPS}
    aten = sum(v for k, v in long.items() if k.startswith("aten::")) - sum(
        v for k, v in short.items() if k.startswith("aten::"))
    return {"syncs_per_iteration": sum(syncs.values()), "sync_ops": syncs, "aten_ops_per_iteration": aten / 4}


def generator_bytes(size: int, masks: int, fused: bool) -> float:
    """Bytes allocated per mask by one forward + backward of the generator (after a warm-up)."""
    kw = {"fused": True} if fused else {}
    gen = SmoothMaskGenerator(size, size, 7, 21.0, native=False, **kw)
    params = torch.rand(masks, *gen.geometry.param_shape, generator=torch.Generator().manual_seed(0))
    grad = torch.rand(masks, size, size, generator=torch.Generator().manual_seed(1))

    def once(p):
        m, _ = gen.generate(p)
        m.backward(grad)

    once(params.clone().requires_grad_(True))  # compiles (fused) and fills the caches of tables
    p = params.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        once(p)
    # Each allocation once: by the op that made it (an event's total would count its children's too).
    allocated = sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)
    return allocated / masks


def graph_breaks(size: int = 32, images: int = 2) -> dict:
    """Graph breaks of one iteration's forward (the PyTorch-ops path) under dynamo."""
    settings = ExtremalSettings.from_flat(areas=AREAS, step=4, sigma=10.0, native_cpu_kernels=False)
    model = engine_model(tiny_cnn(), settings)
    x = torch.randn(images, 3, size, size)
    gen = SmoothMaskGenerator(size, size, 4, 10.0, 20.0, False)
    pyramid = build_pyramid(x)
    targets = torch.arange(images).repeat_interleave(len(AREAS))
    areas_list = torch.tensor(AREAS).repeat(images)
    if hasattr(area_module, "area_plan"):  # this commit: the per-batch constants as a plan
        areas = area_module.area_plan(areas_list.tolist(), gen.geometry.num_entries)
    else:
        areas = areas_list

    def forward(params):
        masks, full = gen.generate(params)
        inputs = torch.flip(variant_inputs(pyramid, masks.view(images, -1, size, size), "preserve", False), dims=(3,))
        gain = variant_reward(model_scores(model, inputs, settings), targets, get_reward("simple"), "preserve")
        return (300.0 * area_module.area_loss(full, areas) - gain).sum()

    params = torch.ones(images * len(AREAS), *gen.geometry.param_shape, requires_grad=True)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward)(params)
    return {"graph_breaks": explained.graph_break_count, "graphs": explained.graph_count,
            "break_reasons": [str(r.reason)[:200] for r in explained.break_reasons]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--masks", type=int, default=96, help="masks for the bytes measure (B = 32 x A = 3)")
    p.add_argument("--no-fused", action="store_true", help="skip the compiled generator (its compile takes minutes)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    run = start_run(args.threads)
    torch.manual_seed(0)
    result = {**per_iteration(), **graph_breaks()}
    print(f"syncs per iteration: {result['syncs_per_iteration']:g} {result['sync_ops']}", flush=True)
    print(f"aten ops per iteration: {result['aten_ops_per_iteration']:g}", flush=True)
    print(f"graph breaks: {result['graph_breaks']} ({result['graphs']} graphs) {result['break_reasons']}", flush=True)
    bar = 8 * args.size * args.size * 4
    result["bytes_bar_per_mask"] = bar
    kinds = ["reference"] + ([] if args.no_fused or not hasattr(SmoothMaskGenerator(8, 8), "fused") else ["fused"])
    for kind in kinds:
        per_mask = generator_bytes(args.size, args.masks, kind == "fused")
        result[f"bytes_per_mask_{kind}"] = per_mask
        print(f"mask generator bytes allocated per mask per iteration ({kind}, {args.size}², K = {args.masks}): "
              f"{per_mask / 1e6:.2f} MB = {per_mask / bar:.2f} x the 8·H·W·4 bar", flush=True)
    if args.out:
        write_json(args.out, {"run": run, "result": result})


if __name__ == "__main__":
    main()
