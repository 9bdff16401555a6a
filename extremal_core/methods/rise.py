"""RISE (Petsiuk et al., BMVC 2018): the saliency of a pixel is the expected score of the image
seen through random binary masks that keep it.

    saliency_b = Σ_n σ(f(x_b ⊙ M_n))_{t_b} · M_n / N

Masks: N binary grids of `num_cells`² cells (each kept with probability p), upsampled bilinearly
to one cell more than the image and cropped at a random shift in [0, cell). The random numbers
come from a private CPU generator seeded with `seed`, drawn in chunks of 32 masks in the order of
TorchRay's `rise` (grid, then the row shifts, then the column shifts), so the masks are the same
on any machine and device, for any batch, and equal TorchRay's on a CPU. Every image of a batch
sees the same masks; the network runs on B images x many masks at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..inputs import check_targets, checked_call
from ..network import engine_model
from ..rewards import class_scores
from ..settings import ExtremalSettings
from .card import MethodCard
from .explanation import Explanation
from .registry import register_method

# The masks drawn per step of the random stream: a part of what `seed` means (TorchRay's batch).
_MASKS_PER_DRAW = 32
_CPU_FORWARD_BATCH = 32  # CPU caches: 32 masked images per pass beat 64 and 128 (bench_methods)
_CUDA_FORWARD_BATCH = 512


def rise_masks(generator: torch.Generator, count: int, size: tuple[int, int], num_cells: int, p: float,
               device: torch.device) -> torch.Tensor:
    """The next `count` (≤ 32) masks of the stream, `[count, H, W]` in [0, 1] on `device`."""
    h, w = size
    cell = (math.ceil(h / num_cells), math.ceil(w / num_cells))
    grid = (torch.rand(count, 1, num_cells, num_cells, generator=generator) < p).float()
    shift_rows = torch.randint(0, cell[0], (count,), generator=generator)
    shift_cols = torch.randint(0, cell[1], (count,), generator=generator)
    up = _upsample_with_border(grid.to(device), (h + cell[0], w + cell[1]))
    rows = (shift_rows[:, None] + torch.arange(h)).to(device)  # [count, H]
    cols = (shift_cols[:, None] + torch.arange(w)).to(device)  # [count, W]
    return up[torch.arange(count, device=device)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]


def _upsample_with_border(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of `[N, 1, n, n]` grids to `size` with the grid reflected by one cell at
    each border first, so the outer cells are interpolated towards their mirror, not clamped."""
    n = grid.shape[-1]
    cell = [math.ceil(s / n) for s in size]
    padded = F.pad(grid, (1, 1, 1, 1), mode="reflect")
    up = F.interpolate(padded, [c * (n + 2) for c in cell], mode="bilinear", align_corners=False)
    return up[:, :, cell[0]:cell[0] + size[0], cell[1]:cell[1] + size[1]]


@register_method("rise", card=MethodCard(maps="positive"))
class RiseExplainer:
    """RISE with `num_masks` masks of `num_cells`² cells kept with probability `p`, from `seed`.

    `probability`: the score the masks are weighted by, `sigmoid` of the logits (TorchRay, the
    paper's comparisons) or `softmax` (the RISE paper); `forward_batch`: masked images per network
    pass (default 32 on a CPU, 512 on CUDA; it changes the speed and memory, not the result).
    """

    num_maps = 1

    def __init__(self, model: torch.nn.Module, *, num_masks: int = 8000, num_cells: int = 7, p: float = 0.5,
                 seed: int = 0, probability: str = "sigmoid", forward_batch: int | None = None):
        if model is None:
            raise ValueError("method 'rise' needs a model")
        if not (isinstance(num_masks, int) and num_masks > 0):
            raise ValueError(f"num_masks must be a positive integer, got {num_masks!r}")
        if not (isinstance(num_cells, int) and num_cells >= 2):
            raise ValueError(f"num_cells must be an integer >= 2, got {num_cells!r}")
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p!r}")
        if probability not in ("sigmoid", "softmax"):
            raise ValueError(f"probability must be 'sigmoid' or 'softmax', got {probability!r}")
        if forward_batch is not None and not (isinstance(forward_batch, int) and forward_batch > 0):
            raise ValueError(f"forward_batch must be a positive integer, got {forward_batch!r}")
        self.model = engine_model(model, ExtremalSettings())  # the engine's private, rewritten copy
        self.num_masks, self.num_cells, self.p = num_masks, num_cells, float(p)
        self.seed, self.probability, self.forward_batch = int(seed), probability, forward_batch

    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation:
        """maps `[B, 1, H, W]`, labels `("rise",)`."""
        t = checked_call(images, targets)
        b, _, h, w = images.shape
        forward_batch = self.forward_batch or (_CUDA_FORWARD_BATCH if images.device.type == "cuda" else _CPU_FORWARD_BATCH)
        # Masks per pass: whole draws, as many as the forward batch holds for all B images.
        draws_per_pass = max(1, forward_batch // (b * _MASKS_PER_DRAW))
        images_per_pass = max(1, forward_batch // _MASKS_PER_DRAW)
        generator = torch.Generator().manual_seed(self.seed)
        saliency = torch.zeros(b, h * w, device=images.device)
        with torch.inference_mode():
            check_targets(t, self.model(images[:1]).shape[1])
            done = 0
            while done < self.num_masks:
                masks = []
                for _ in range(draws_per_pass):
                    count = min(_MASKS_PER_DRAW, self.num_masks - done)
                    if count <= 0:
                        break
                    masks.append(rise_masks(generator, count, (h, w), self.num_cells, self.p, images.device))
                    done += count
                masks = torch.cat(masks)  # [K, H, W]
                for lo in range(0, b, images_per_pass):
                    hi = min(b, lo + images_per_pass)
                    saliency[lo:hi] += self._weights(images[lo:hi], t[lo:hi], masks) @ masks.view(len(masks), h * w)
        return Explanation(maps=(saliency / self.num_masks).view(b, 1, h, w), labels=("rise",))

    def _weights(self, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The target's probability for each image seen through each mask, `[G, K]` (a fully
        convolutional model's score map averaged over its positions: TorchRay's 1 x 1 at 224²)."""
        g, k = images.shape[0], masks.shape[0]
        masked = (images[:, None] * masks[None, :, None]).flatten(0, 1)  # [G*K, C, H, W]
        logits = class_scores(self.model(masked)).view(g, k, -1)
        probs = torch.sigmoid(logits) if self.probability == "sigmoid" else torch.softmax(logits, dim=-1)
        return probs.gather(2, targets.view(g, 1, 1).expand(g, k, 1)).squeeze(2)
