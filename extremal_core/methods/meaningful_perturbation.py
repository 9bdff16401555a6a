"""Meaningful perturbation (Fong & Vedaldi, ICCV 2017), the deletion game, for B images at once.

A coarse mask m (one cell per `mask_scale` pixels, 28x28 at 224²; 1 keeps, 0 deletes) is
upsampled bilinearly and blurred, and blends each image with its blurred copy (the null image):
x' = x·m + null·(1 - m). Adam (lr 0.1, 300 iterations) minimises, per image,

    softmax(f(jitter(x')))_t + λ1·Σ|1 - m| + λ2·Σ(|∂_u m|^β + |∂_v m|^β)

over the pixels of the upsampled mask (λ1 = 1e-4, λ2 = 1e-2, β = 3: the paper's terms on the
image lattice), with the cells projected onto [0, 1] after each step. The start is a blurred circle deleted at the centre; the
jitter shifts the blended image by up to `jitter` pixels, drawn from `seed` and the same for
every image of a batch, so an image's result does not depend on its batch. The saliency map is
the deletion, 1 - m at the image's resolution. The blur is the engine's (`gaussian_blur`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..inputs import check_targets, checked_call
from ..masks import clamp_rounding
from ..network import engine_model
from ..perturbation import gaussian_blur
from ..settings import ExtremalSettings
from .card import Column, MethodCard
from .explanation import Explanation
from .registry import register_method


def blurred_circle(batch: int, size: tuple[int, int], radius: float, device: torch.device) -> torch.Tensor:
    """`[B, 1, h, w]` masks that delete a disk of `radius` (a fraction of the shorter side) at the
    centre, blurred over one cell: the optimisation's start."""
    h, w = size
    y = torch.arange(h, device=device, dtype=torch.float32) + 0.5 - h / 2
    x = torch.arange(w, device=device, dtype=torch.float32) + 0.5 - w / 2
    disk = ((y[:, None] ** 2 + x[None, :] ** 2) <= (radius * min(h, w)) ** 2).float()
    return (1.0 - gaussian_blur(disk.view(1, 1, h, w), 1.0, padding="replicate")).expand(batch, 1, h, w).clone()


def total_variation(masks: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ |m[u+1, v] - m[u, v]|^β + |m[u, v+1] - m[u, v]|^β per mask of `[B, 1, h, w]` -> `[B]`."""
    rows = (masks[..., 1:, :] - masks[..., :-1, :]).abs().pow(beta).flatten(1).sum(1)
    cols = (masks[..., :, 1:] - masks[..., :, :-1]).abs().pow(beta).flatten(1).sum(1)
    return rows + cols


@register_method("meaningful_perturbation", card=MethodCard(
    columns=(Column("deleted_probability", "float32", "[]", "the target's probability on the final blended image"),),
    maps="mask",
))
class MeaningfulPerturbationExplainer:
    """The deletion game with the official defaults; every number is a keyword.

    mask_scale: pixels per mask cell; mask_blur / null_blur: σ in pixels of the upsampled mask's
    blur and of the null image; init_radius: the deleted disk at the start (fraction of the shorter
    side); lr, max_iter: Adam; jitter: largest shift in pixels; l1, tv, tv_beta: the regularisers;
    seed: the jitter's random stream; batch_size: images per optimisation (None: the whole batch).
    """

    num_maps = 1

    def __init__(self, model: torch.nn.Module, *, mask_scale: int = 8, mask_blur: float = 5.0, null_blur: float = 10.0,
                 init_radius: float = 0.25, lr: float = 0.1, max_iter: int = 300, jitter: int = 4, l1: float = 1e-4,
                 tv: float = 1e-2, tv_beta: float = 3.0, seed: int = 0, batch_size: int | None = None):
        if model is None:
            raise ValueError("method 'meaningful_perturbation' needs a model")
        for name, value in (("mask_scale", mask_scale), ("max_iter", max_iter)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(jitter, int) and jitter >= 0):
            raise ValueError(f"jitter must be a non-negative integer, got {jitter!r}")
        for name, value in (("mask_blur", mask_blur), ("null_blur", null_blur), ("l1", l1), ("tv", tv)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not (lr > 0 and tv_beta >= 1 and 0 <= init_radius <= 1):
            raise ValueError(f"need lr > 0, tv_beta >= 1 and init_radius in [0, 1], got {lr!r}, {tv_beta!r}, {init_radius!r}")
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = engine_model(model, ExtremalSettings())  # the engine's private, rewritten copy
        self.mask_scale, self.init_radius = mask_scale, init_radius
        self.mask_blur, self.null_blur = float(mask_blur), float(null_blur)
        self.lr, self.max_iter, self.jitter, self.l1, self.tv, self.tv_beta = lr, max_iter, jitter, l1, tv, tv_beta
        self.seed, self.batch_size = int(seed), batch_size

    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation:
        """maps `[B, 1, H, W]` = 1 - m (what was deleted), labels `("deletion",)`, values
        `deleted_probability` `[B]`: the target's probability on the final blended image."""
        t = checked_call(images, targets)
        per_batch = self.batch_size or images.shape[0]
        maps, probs = [], []
        for lo in range(0, images.shape[0], per_batch):
            m, prob = self._optimise(images[lo:lo + per_batch], t[lo:lo + per_batch])
            maps.append(1.0 - m)
            probs.append(prob)
        return Explanation(maps=torch.cat(maps), labels=("deletion",), values={"deleted_probability": torch.cat(probs)})

    def upsample(self, params: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Mask cells `[B, 1, h, w]` -> the blending mask `[B, 1, H, W]`."""
        up = F.interpolate(params, size, mode="bilinear", align_corners=False)
        return clamp_rounding(gaussian_blur(up, self.mask_blur, padding="replicate"))

    def _optimise(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = images.shape
        size = (h, w)
        with torch.no_grad():
            check_targets(targets, self.model(images[:1]).shape[1])
            null = gaussian_blur(images, self.null_blur)
        cells = (math.ceil(h / self.mask_scale), math.ceil(w / self.mask_scale))
        params = blurred_circle(b, cells, self.init_radius, images.device).requires_grad_(True)
        optimizer = torch.optim.Adam([params], lr=self.lr)
        shifts = torch.randint(0, self.jitter + 1, (self.max_iter, 2), generator=torch.Generator().manual_seed(self.seed))
        with torch.enable_grad():
            for step in range(self.max_iter):
                m = self.upsample(params, size)
                blended = self._jittered(images * m + null * (1.0 - m), shifts[step])
                prob = torch.softmax(self.model(blended), dim=1).gather(1, targets[:, None]).squeeze(1)
                loss = prob + self.l1 * (1.0 - m).abs().flatten(1).sum(1) + self.tv * total_variation(m, self.tv_beta)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()  # a sum of per-image losses: each image's gradient is its own
                optimizer.step()
                with torch.no_grad():
                    params.clamp_(0.0, 1.0)
        with torch.no_grad():
            m = self.upsample(params, size)
            prob = torch.softmax(self.model(images * m + null * (1.0 - m)), dim=1).gather(1, targets[:, None]).squeeze(1)
        return m.detach(), prob

    def _jittered(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """`x` `[B, C, H, W]` shifted up-left by `shift` = (dy, dx) pixels, the border reflected."""
        if self.jitter == 0:
            return x
        h, w = x.shape[2:]
        dy, dx = int(shift[0]), int(shift[1])
        return F.pad(x, (0, self.jitter, 0, self.jitter), mode="reflect")[:, :, dy:dy + h, dx:dx + w]
