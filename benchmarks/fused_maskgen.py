"""Experimental: the smooth max-convolution of `extremal_core.masks` as two torch.compile'd kernels.

Same maths as `extremal_core.masks._SmoothMaxConv` (m = Σ_o f·softmax_o(c·f), f = W[o, r]·v[k, o, j],
backward recomputes the exponentials), written as whole-tensor expressions so that inductor can
fuse the exp/multiply/reduce over the O offsets into one kernel per pass instead of ~5 (forward)
and ~5 (backward) memory passes over a [K, O, S, C] chunk. Used only by `bench_core.py
--gpu` to measure the possible gain; on this 2-core CPU inductor's C++ was ~1.2-2x *slower* than
the chunked eager code (it materializes the exponentials), so CPUs run the hand-written C loops
of `extremal_core/cpu_kernels.c` instead (~4x the eager code). On a GPU (memory-bound passes)
this prototype is the candidate to measure.

    python benchmarks/fused_maskgen.py --device cuda --masks 192   # micro-benchmark, fwd+bwd
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extremal_core.masks import SmoothMaskGenerator, _SmoothMaxConv  # noqa: E402


def _forward(nb: torch.Tensor, table: torch.Tensor, c: float):
    cf = c * nb[:, :, None, :] * table[None, :, :, None]  # [K, O, S, C], never materialized once fused
    e = torch.exp(cf)
    norm = e.sum(1)
    return (cf * e).sum(1) / norm / c, norm


def _backward(nb, table, out, norm, grad_out, c: float):
    b = grad_out / norm
    a = b * (1.0 - c * out)
    cf = c * nb[:, :, None, :] * table[None, :, :, None]
    g = (a[:, None] + b[:, None] * cf) * torch.exp(cf)
    return (g * table[None, :, :, None]).sum(2)


_compiled: dict = {}


def _get(name, fn):
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


class FusedSmoothMaxConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, neighbours, table, coldness):
        out, norm = _get("fwd", _forward)(neighbours, table, coldness)
        ctx.save_for_backward(neighbours, table, out, norm)
        ctx.coldness = coldness
        return out

    @staticmethod
    def backward(ctx, grad_out):
        nb, table, out, norm = ctx.saved_tensors
        return _get("bwd", _backward)(nb, table, out, norm, grad_out.contiguous(), ctx.coldness), None, None


def time_generate(gen: SmoothMaskGenerator, params: torch.Tensor, impl, reps: int = 5):
    """Median seconds of one forward+backward of the smooth max (neighbour unfold included); output, grad."""
    table = gen.table(params)
    times, out, grad = [], None, None
    for i in range(reps + 2):  # two warm-ups (compilation)
        p = params.detach().requires_grad_(True)
        if p.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = impl.apply(gen.neighbours(p), table, float(gen.coldness))
        out.backward(torch.full_like(out, 0.01))
        if p.is_cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
        grad = p.grad
    return statistics.median(times), out.detach(), grad


def compare(size: int, step: int, sigma: float, masks: int, device, reps: int = 5) -> dict:
    gen = SmoothMaskGenerator(size, size, step, sigma)
    g = torch.Generator().manual_seed(0)
    params = torch.rand(masks, *gen.geometry.param_shape, generator=g).to(device)
    t_eager, o_eager, g_eager = time_generate(gen, params, _SmoothMaxConv, reps)
    t_fused, o_fused, g_fused = time_generate(gen, params, FusedSmoothMaxConv, reps)
    return dict(size=size, masks=masks, eager_s=t_eager, fused_s=t_fused, speedup=t_eager / t_fused,
                max_abs_diff_out=float((o_eager - o_fused).abs().max()),
                max_abs_diff_grad=float((g_eager - g_fused).abs().max()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--step", type=int, default=7)
    p.add_argument("--sigma", type=float, default=21.0)
    p.add_argument("--masks", default="24,96,192")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for k in [int(v) for v in args.masks.split(",")]:
        r = compare(args.size, args.step, args.sigma, k, torch.device(args.device))
        print(f"{args.size}x{args.size} K={k}: eager {1000 * r['eager_s']:.1f} ms, compiled {1000 * r['fused_s']:.1f} ms "
              f"({r['speedup']:.2f}x); max|d out| {r['max_abs_diff_out']:.1e}, max|d grad| {r['max_abs_diff_grad']:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
