"""The centre baseline as a map: a Gaussian bump at the image centre, whatever the image or target.

The pointing game's "center" baseline points at (W/2, H/2); as a map it runs through the same
evaluation code as every other method (its argmax is a centre pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..inputs import checked_call
from .card import MethodCard
from .explanation import Explanation
from .registry import register_method


@register_method("center", card=MethodCard(maps="positive"))
class CenterExplainer:
    """maps `[B, 1, H, W]` = exp(-d² / 2s²) with d the distance to the image centre and
    s = `sigma` x min(H, W); 1 at the centre. The model is not used."""

    num_maps = 1

    def __init__(self, model: torch.nn.Module | None = None, *, sigma: float = 0.25):
        if not sigma > 0:
            raise ValueError(f"sigma must be positive (a fraction of the shorter image side), got {sigma!r}")
        self.sigma = float(sigma)

    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation:
        checked_call(images, targets)  # the same call contract as every method, though neither is read
        b, _, h, w = images.shape
        s = self.sigma * min(h, w)
        # Pixel centres at i + 0.5, the image centre at (H/2, W/2): the map is mirror-symmetric.
        y = torch.arange(h, device=images.device, dtype=torch.float32) + 0.5 - h / 2
        x = torch.arange(w, device=images.device, dtype=torch.float32) + 0.5 - w / 2
        bump = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * s * s))  # [H, W]
        return Explanation(maps=bump.expand(b, 1, h, w).clone(), labels=("center",))
