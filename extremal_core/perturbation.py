"""The perturbation operator m ⊗ x: a pyramid of increasingly perturbed copies of each image,
blended per pixel by the mask (1 keeps the pixel, 0 perturbs it fully)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import cpu_kernels

# Matches TorchRay's single-precision constants so the filters agree bit for bit.
_SQRT_TWO = math.sqrt(2.0)
_EPS = 1.19209290e-07


def gaussian_blur(images: torch.Tensor, sigma: float, padding: str = "zeros") -> torch.Tensor:
    """Separable Gaussian blur of `[N, C, H, W]` with a ±⌈4σ⌉ support; `padding` "zeros" (the
    perturbation pyramid, as TorchRay) or "replicate" (masks, whose border must not fade)."""
    if sigma <= 0:
        return images.clone()
    width = math.ceil(4 * sigma)
    taps = torch.arange(-width, width + 1, dtype=torch.float32, device=images.device) / (_SQRT_TWO * sigma + _EPS)
    taps = torch.exp(-taps * taps)
    taps = (taps / taps.sum()).to(images.dtype)
    c = images.shape[1]
    if padding == "replicate":
        images, pad = F.pad(images, (width, width, width, width), mode="replicate"), (0, 0)
    elif padding == "zeros":
        pad = (width, width)
    else:
        raise ValueError(f"padding must be 'zeros' or 'replicate', got {padding!r}")
    out = F.conv2d(images, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(pad[0], 0), groups=c)
    return F.conv2d(out, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, pad[1]), groups=c)


def build_pyramid(images: torch.Tensor, num_levels: int = 8, max_blur: float = 20.0, kind: str = "blur") -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, L, C, H, W]`; level 0 is the most perturbed, level L-1 the image.

    blur: σ_l = max_blur·(1 - l/(L-1)); fade: level l = x·l/(L-1).
    """
    levels = []
    with torch.no_grad():
        for level in range(num_levels):
            t = level / (num_levels - 1)
            if kind == "blur":
                levels.append(gaussian_blur(images, (1.0 - t) * max_blur))
            elif kind == "fade":
                levels.append(images * t)
            else:
                raise ValueError(f"unknown perturbation {kind!r}; valid perturbations: blur, fade")
    return torch.stack(levels, dim=1)


class _NativePerturb(torch.autograd.Function):
    """`perturb` in the compiled C of `cpu_kernels` (float32 CPU tensors, constant pyramid)."""

    @staticmethod
    def forward(ctx, pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pyramid, masks)
        return cpu_kernels.perturb_forward(pyramid, masks)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pyramid, masks = ctx.saved_tensors
        return None, cpu_kernels.perturb_backward(pyramid, masks, grad_out)


def perturb(pyramid: torch.Tensor, masks: torch.Tensor, native: bool = True) -> torch.Tensor:
    """Blend pyramid levels per pixel: `[B, L, C, H, W]` x masks `[B, K, H, W]` -> `[B, K, C, H, W]`.

    The mask value selects a fractional level, linearly interpolated between its neighbours.
    `native`: use the compiled CPU loop where it applies (float32 CPU tensors, pyramid without
    gradient).
    """
    if native and not pyramid.requires_grad and cpu_kernels.supports(pyramid, masks):
        return _NativePerturb.apply(pyramid, masks)
    num_levels = pyramid.shape[1]
    w = (masks * (num_levels - 1)).unsqueeze(2)  # [B, K, 1, H, W]
    # Segments [l, l + 1] with l <= L - 2: at m = 1 the slope of the last segment, as at 1 - ulp,
    # so a mask of exactly 1 keeps the reward's gradient whichever way its value rounded.
    lower = w.detach().floor().clamp(0, num_levels - 2)
    frac = w - lower
    lower = lower.long()
    upper = lower + 1
    # gather, not take_along_dim: the latter wraps indices with a remainder pass that costs twice
    # the gather itself.
    b, k = masks.shape[:2]
    levels = pyramid.unsqueeze(1).expand(b, k, *pyramid.shape[1:])  # [B, K, L, C, H, W]
    shape = (-1, -1, 1, pyramid.shape[2], -1, -1)
    y0 = levels.gather(2, lower.unsqueeze(2).expand(*shape)).squeeze(2)
    y1 = levels.gather(2, upper.unsqueeze(2).expand(*shape)).squeeze(2)
    return y0 + frac * (y1 - y0)
