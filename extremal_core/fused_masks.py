"""The smooth max-convolution of `masks.py` as two whole-tensor expressions for `torch.compile`.

`masks._SmoothMaxConv` (the reference, PyTorch ops) gathers the `[K, O, C]` neighbours and
streams over `[k, o, S, C]` chunks, then permutes the phases into pixels: several full-size
temporaries per mask, each written and read again. Here each output pixel y = step·cy + ry reads
its parameters straight from the zero-padded grid (`pp[cy + oy, cx + ox]`) and the kernel weight
`W[o, (ry, rx)]`, so the forward is one reduction over the O offsets that writes the mask (and
the softmax's normaliser, kept for the backward) and nothing else. The backward is the same map
read the other way: the gradient of parameter p sums, over the offsets o and phases r, the
pixels s·(p - o) + r that read it, so it is one reduction that writes the parameter gradient
alone. Inductor compiles each into one fused kernel (Triton on CUDA, C++ on a CPU); uncompiled,
the same functions are a slow, memory-hungry but exact reference of the fusion.

Same maths as the reference (the masks agree to float rounding, ~1e-7); tests compare the two.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .masks import MaskGeometry


INDEX_NAMES = ("cell_y", "phase_y", "back_y", "cell_x", "phase_x", "back_x")


def pixel_indices(geometry: MaskGeometry, device: torch.device) -> dict[str, torch.Tensor]:
    """Index tensors of the fused map (small, made once per geometry and device).

    cell_y `[Hf]`, phase_y `[Hf]`: the cell and phase of each mask row (x likewise); back_y
    `[Hpp, win, step]`: for padded parameter row p, offset o and phase r, the mask row
    step·(p - o) + r, or Hf (a zero row) where that row is off the mask.
    """
    hf, wf = geometry.full_shape
    s, win = geometry.step, geometry.window
    out = {}
    for axis, size, grid in (("y", hf, geometry.param_shape[0]), ("x", wf, geometry.param_shape[1])):
        pixel = torch.arange(size)
        out[f"cell_{axis}"] = (pixel // s).to(device)
        out[f"phase_{axis}"] = (pixel % s).to(device)
        padded = grid + 2 * geometry.padding
        rows = s * (torch.arange(padded)[:, None, None] - torch.arange(win)[None, :, None]) + torch.arange(s)
        out[f"back_{axis}"] = torch.where((rows >= 0) & (rows < size), rows, size).to(device)
    return out


def _weights(table: torch.Tensor, win: int, s: int, idx: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[Hf, Wf, win, win]`: the weight of offset (oy, ox) at each pixel (by its phase)."""
    w4 = table.view(win, win, s, s)
    return w4[:, :, idx["phase_y"][:, None], idx["phase_x"][None, :]].permute(2, 3, 0, 1)


def fused_forward(params, table, idx, padding: int, win: int, s: int, coldness: float):
    """params `[K, Hp, Wp]` -> (mask `[K, Hf, Wf]`, normaliser `[K, Hf, Wf]`). The mask is clamped
    to [0, 1] in the same pass: a convex combination of values in [0, 1], it leaves the interval
    by rounding only, and the backward treats the clamp as the identity (`masks.clamp_rounding`)."""
    pp = F.pad(params, (padding,) * 4)
    o = torch.arange(win, device=params.device)
    rows = idx["cell_y"][:, None, None, None] + o[None, None, :, None]  # [Hf, 1, win, 1]
    cols = idx["cell_x"][None, :, None, None] + o[None, None, None, :]  # [1, Wf, 1, win]
    cf = coldness * pp[:, rows, cols] * _weights(table, win, s, idx)  # [K, Hf, Wf, win, win]
    e = torch.exp(cf)  # parameters lie in [0, 1]: c·f <= c, no overflow, no max pass
    norm = e.sum(dim=(3, 4))
    return ((cf * e).sum(dim=(3, 4)) / norm / coldness).clamp(0.0, 1.0), norm


def fused_backward(params, table, idx, out, norm, grad_out, padding: int, win: int, s: int, coldness: float):
    """The parameters' gradient `[K, Hp, Wp]` from the mask's `grad_out` `[K, Hf, Wf]`.

    With b = g/Z and a = b·(1 - c·m) (the `_backward_factors` of `masks.py`), pixel u adds
    W·e^{cf}·(a_u + b_u·cf) to the parameter it reads at offset o, cf = c·W·p.
    """
    b = grad_out / norm
    a = b * (1.0 - coldness * out)
    a, b = F.pad(a, (0, 1, 0, 1)), F.pad(b, (0, 1, 0, 1))  # row/column Hf, Wf: zeros (off the mask)
    pp = F.pad(params, (padding,) * 4)
    by, bx = idx["back_y"], idx["back_x"]  # [Hpp, win, s], [Wpp, win, s]
    rows = by[:, :, :, None, None, None]
    cols = bx[None, None, None, :, :, :]
    w = table.view(win, win, s, s).permute(0, 2, 1, 3)  # [oy, ry, ox, rx]
    w = w[None, None, :, :, None, :, :]  # [1, 1(p_y), oy, ry, 1(p_x), ox, rx]
    cf = coldness * pp[:, :, None, None, :, None, None] * w
    g = w * torch.exp(cf) * (a[:, rows, cols] + b[:, rows, cols] * cf)  # [K, Hpp, win, s, Wpp, win, s]
    grad = g.sum(dim=(2, 3, 5, 6))
    hp, wp = params.shape[1:]
    return grad[:, padding : padding + hp, padding : padding + wp]


@functools.cache
def _compiled(name: str):
    fn = {"forward": fused_forward, "backward": fused_backward}[name]
    return torch.compile(fn, dynamic=False)


class FusedSmoothMax(torch.autograd.Function):
    """Parameters `[K, Hp, Wp]` -> the full mask `[K, Hf, Wf]` by `fused_forward`,
    compiled (each pass one fused kernel) unless `compiled=False` or already inside a compiled
    graph (which captures the plain functions)."""

    @staticmethod
    def forward(ctx, params, table, idx_list, geometry, coldness: float, compiled: bool):
        idx = dict(zip(INDEX_NAMES, idx_list))
        geo = (geometry.padding, geometry.window, geometry.step, coldness)
        use = compiled and not torch.compiler.is_compiling()
        out, norm = (_compiled("forward") if use else fused_forward)(params, table, idx, *geo)
        ctx.save_for_backward(params, table, out, norm, *idx_list)
        ctx.geo, ctx.use = geo, use
        return out

    @staticmethod
    def backward(ctx, grad_out):
        params, table, out, norm, *idx_list = ctx.saved_tensors
        idx = dict(zip(INDEX_NAMES, idx_list))
        fn = _compiled("backward") if ctx.use else fused_backward
        return fn(params, table, idx, out, norm, grad_out.contiguous(), *ctx.geo), None, None, None, None, None
