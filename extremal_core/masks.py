"""Smooth masks by max-convolution (paper section 3.2, supplement figure 2).

A low-resolution parameter grid m̄ (stride `step`) is spread by a flat-topped kernel
k(z) = exp(-2·max(z - 1/2, 0)²), z = distance / sigma, and pooled with a smooth max
Σ f·softmax(coldness·f) over the (2R+1)² parameters of each pixel's neighbourhood.

The geometry (margin, padding, neighbourhood radius, output size) is the reference one, so masks
match TorchRay's `MaskGenerator`. The difference is how it is computed: pixel u = step·j + r sees
the parameters of cell j shifted by the neighbourhood offset o, with a weight that depends only on
(o, r). So the kernel is a small table `[O, step²]` and the smooth max is evaluated by an autograd
function that never keeps the `[K, O, H, W]` intermediate TorchRay keeps: it streams over cache-
sized chunks and rebuilds them in the backward pass (about 5x less time per mask on a CPU).
For float32 masks on a CPU the same loops run as compiled C (`cpu_kernels.py`), another 4-5x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cpu_kernels
from .fused_masks import INDEX_NAMES, FusedSmoothMax, pixel_indices

# Elements of the transient [k, o, S, C] tensors per chunk: small on CPU so they stay in cache,
# large on GPUs so kernel launches stay few.
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}


def flat_top_kernel(z: torch.Tensor) -> torch.Tensor:
    """k(z) = exp(-2·max(z - 0.5, 0)²): flat up to half the scale, then a Gaussian tail."""
    return torch.exp(-2.0 * (z - 0.5).clamp(min=0.0) ** 2)


@dataclass(frozen=True)
class MaskGeometry:
    """Sizes of the parameter grid and of the generated mask for an `height` x `width` image.

    `param_shape` is m̄'s grid; `full_shape` is the mask with its margin (used by the area
    constraint); the image-sized mask is `full[margin_px : margin_px + height, ...]`.
    """

    height: int
    width: int
    step: int
    sigma: float

    @property
    def margin(self) -> float:
        return self.sigma

    @property
    def margin_px(self) -> int:
        return round(self.margin)

    @property
    def padding(self) -> int:
        return 1 + math.ceil((self.margin + self.sigma) / self.step)

    @property
    def radius(self) -> int:
        return 1 + math.ceil(self.sigma / self.step)

    @property
    def window(self) -> int:
        return 2 * self.radius + 1

    @property
    def param_shape(self) -> tuple[int, int]:
        return (math.ceil(self.height / self.step), math.ceil(self.width / self.step))

    @property
    def cell_shape(self) -> tuple[int, int]:
        """Cells of `step` x `step` output pixels that share one parameter neighbourhood."""
        extra = 2 * self.padding - self.window + 1
        return (self.param_shape[0] + extra, self.param_shape[1] + extra)

    @property
    def full_shape(self) -> tuple[int, int]:
        return tuple(c * self.step - self.step + 1 for c in self.cell_shape)  # type: ignore[return-value]

    @property
    def num_entries(self) -> int:
        """Entries of the full mask, the N of the area constraint."""
        return self.full_shape[0] * self.full_shape[1]

    def kernel_table(self, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
        """Weights `[O, step²]`: offset o = (oy, ox) of the window, phase r = (ry, rx) in the cell.

        Pixel u = step·j + r and the parameter at grid index j + o - padding, placed at
        margin + step·(j + o - padding), are r - margin - step·(o - padding) apart.
        """
        phase = torch.arange(self.step, dtype=torch.float64)
        offset = torch.arange(self.window, dtype=torch.float64)
        d = phase[None, :] - self.margin - self.step * (offset[:, None] - self.padding)  # [window, step]
        dist = torch.sqrt(d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2)  # [oy, ox, ry, rx]
        table = flat_top_kernel(dist / self.sigma).reshape(self.window**2, self.step**2)
        return table.to(device=device, dtype=dtype)


class _SmoothMaxConv(torch.autograd.Function):
    """m[k, r, j] = Σ_o f·softmax_o(c·f), f = W[o, r]·v[k, o, j], with a chunked, fused backward.

    v: neighbours `[K, O, C]` (C cells), W: kernel table `[O, S]` (S = step² phases).
    Output `[K, S, C]`. Parameters must lie in [0, 1] (the optimizer clamps them), so
    c·f <= c and exp(c·f) cannot overflow: no max-subtraction pass is needed.
    """

    @staticmethod
    def forward(ctx, neighbours: torch.Tensor, table: torch.Tensor, coldness: float):
        k, o, cells = neighbours.shape
        scaled = neighbours * coldness
        norm = neighbours.new_zeros(k, table.shape[1], cells)
        acc = torch.zeros_like(norm)
        for ks, os in _chunks(neighbours, table):
            cf = scaled[ks, os, None, :] * table[None, os, :, None]  # [k, o, S, C]
            e = torch.exp(cf)
            norm[ks] += e.sum(dim=1)
            acc[ks] += cf.mul_(e).sum(dim=1)
        out = acc.div_(norm).div_(coldness)
        ctx.save_for_backward(neighbours, table, out, norm)
        ctx.coldness = coldness
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        neighbours, table, out, norm = ctx.saved_tensors
        c = ctx.coldness
        a, b = _backward_factors(grad_out, out, norm, c)
        scaled = neighbours * c
        grad = torch.empty_like(neighbours)
        s = table.shape[1]
        for ks, os in _chunks(neighbours, table):
            w = table[os]
            cf = scaled[ks, os, None, :] * w[None, :, :, None]
            g = torch.addcmul(a[ks, None], cf, b[ks, None]).mul_(torch.exp(cf))
            kk, oo = g.shape[:2]
            rows = w.unsqueeze(0).expand(kk, oo, s).reshape(kk * oo, 1, s)
            grad[ks, os] = torch.bmm(rows, g.reshape(kk * oo, s, -1)).view(kk, oo, -1)
        return grad, None, None


class _NativeSmoothMaxConv(torch.autograd.Function):
    """The same map from the parameters `[K, Hp, Wp]` (neighbours gathered inside), in the
    compiled C of `cpu_kernels` (float32 CPU tensors only)."""

    @staticmethod
    def forward(ctx, params: torch.Tensor, table: torch.Tensor, geometry: MaskGeometry, coldness: float):
        out, norm = cpu_kernels.smooth_max_forward(params, table, geometry, coldness)
        ctx.save_for_backward(params, table, out, norm)
        ctx.geometry, ctx.coldness = geometry, coldness
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        params, table, out, norm = ctx.saved_tensors
        a, b = _backward_factors(grad_out, out, norm, ctx.coldness)
        return cpu_kernels.smooth_max_backward(params, table, a, b, ctx.geometry, ctx.coldness), None, None, None


def _backward_factors(grad_out, out, norm, coldness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dm/df_o = p_o·(1 + c·(f_o - m)) with p = e/Z, so g·dm/df_o = e_o·(a + b·c·f_o) with these a, b."""
    b = grad_out / norm
    return b * (1.0 - coldness * out), b


def _chunks(neighbours: torch.Tensor, table: torch.Tensor):
    """Slices (masks, offsets) whose [k, o, S, C] block fits the device's chunk budget."""
    k, o, cells = neighbours.shape
    budget = _CHUNK_ELEMENTS.get(neighbours.device.type, _CHUNK_ELEMENTS["cuda"])
    per_offset = table.shape[1] * cells
    o_step = max(1, min(o, budget // per_offset))
    k_step = max(1, budget // (per_offset * o)) if o_step == o else 1
    for k0 in range(0, k, k_step):
        for o0 in range(0, o, o_step):
            yield slice(k0, k0 + k_step), slice(o0, o0 + o_step)


class _ClampValue(torch.autograd.Function):
    """Clamp to [0, 1] with the identity as gradient. The smooth max of parameters in [0, 1] is a
    convex combination of values in [0, 1]: the clamp only removes rounding (1 + ulp), so it must
    not cut the gradient of an entry whose value happened to round above 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def clamp_rounding(x: torch.Tensor) -> torch.Tensor:
    """`x` clamped to [0, 1] with the identity as gradient: for convex combinations of values in
    [0, 1] (smooth maxima, blurs), where only rounding leaves the interval."""
    return _ClampValue.apply(x)


class SmoothMaskGenerator:
    """Turns parameters `[K, Hp, Wp]` into smooth masks.

    `generate` returns `(mask [K, H, W], full [K, Hf, Wf])`: the image-sized mask and the mask
    with its margin, which the area constraint uses. A hard max (`coldness=inf`) is available for
    analysis (Lemma 1 of the supplement). `native=False` keeps the smooth max in PyTorch ops even
    where the compiled CPU kernel is available. `fused=True` computes the smooth max by the fused
    whole-tensor map of `fused_masks.py` through `torch.compile` (one kernel per pass, no
    full-size temporaries; the chunked PyTorch ops stay the reference it is tested against).
    """

    def __init__(
        self,
        height: int,
        width: int,
        step: int = 7,
        sigma: float = 21.0,
        coldness: float = 20.0,
        native: bool = True,
        fused: bool = False,
    ):
        self.geometry = MaskGeometry(height, width, step, sigma)
        self.coldness = coldness
        self.native = native
        self.fused = fused
        # Per device (and dtype): made on first use, then reused by every call.
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._indices: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def table(self, like: torch.Tensor) -> torch.Tensor:
        """The kernel table on `like`'s device and dtype, made once (no copy from the CPU per call)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = self.geometry.kernel_table().to(like.device, like.dtype)  # float32 values, as ever
        return self._tables[key]

    def indices(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The fused map's index tensors on `like`'s device (`fused_masks.pixel_indices`), made once."""
        if like.device not in self._indices:
            idx = pixel_indices(self.geometry, like.device)
            self._indices[like.device] = tuple(idx[name] for name in INDEX_NAMES)
        return self._indices[like.device]

    def neighbours(self, params: torch.Tensor) -> torch.Tensor:
        """The parameters each cell sees: `[K, Hp, Wp]` -> `[K, O, C]` (zeros past the grid)."""
        g = self.geometry
        return F.unfold(params.unsqueeze(1), g.window, padding=g.padding)

    def generate(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.geometry
        if params.dim() != 3 or tuple(params.shape[1:]) != g.param_shape:
            raise ValueError(
                f"mask parameters must be [K, {g.param_shape[0]}, {g.param_shape[1]}], got {list(params.shape)}"
            )
        table = self.table(params)
        if self.fused and not math.isinf(self.coldness):
            return self._crop(FusedSmoothMax.apply(params, table, self.indices(params), g, float(self.coldness), True))
        if math.isinf(self.coldness):
            phases = (self.neighbours(params).unsqueeze(2) * table[None, :, :, None]).amax(dim=1)
        elif self.native and cpu_kernels.supports(params):
            phases = _NativeSmoothMaxConv.apply(params, table, g, float(self.coldness))
        else:
            phases = _SmoothMaxConv.apply(self.neighbours(params), table, float(self.coldness))
        k, (hc, wc), s = params.shape[0], g.cell_shape, g.step
        cells = phases.view(k, s, s, hc, wc).permute(0, 3, 1, 4, 2).reshape(k, hc * s, wc * s)
        return self._crop(clamp_rounding(cells[:, : g.full_shape[0], : g.full_shape[1]]))

    def _crop(self, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the image-sized mask `[K, H, W]`, `full`): the image's part of the full mask `[K, Hf, Wf]`."""
        g, m = self.geometry, self.geometry.margin_px
        return full[:, m : m + g.height, m : m + g.width], full
