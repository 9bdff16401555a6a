"""The energy-based pointing game (Wang et al., "Score-CAM: Score-Weighted Visual Explanations
for Convolutional Neural Networks", CVPR-W 2020, section 4.3): instead of asking whether the
map's maximum lands on the object, the share of the map's energy that lies inside the ground
truth,

    proportion = sum_{(u, v) in G} L+(u, v) / sum_{(u, v)} L+(u, v),

where ``L+ = max(L, 0)`` is the map's positive part at the original image size (the same map the
hit-based game takes the argmax of, summed over a row's maps, unsmoothed: Score-CAM does not
smooth) and ``G`` the ground truth (a box or the union of masks, ``ground_truth.class_mask``).
A map without positive energy has share 0. Per class, the mean share over its pairs; the score
is the mean over the classes (as the hit-based accuracy is averaged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def energy_share(saliency: torch.Tensor | np.ndarray, truth: np.ndarray) -> float:
    """Share in [0, 1] of the positive energy of ``saliency`` ``[H, W]`` (or ``[M, H, W]``, summed
    over M first) inside the bool ``truth`` ``[H, W]`` (row = y, column = x). Float64 sums."""
    s = torch.as_tensor(saliency).double()
    if s.dim() == 3:
        s = s.sum(dim=0)
    if tuple(s.shape) != tuple(truth.shape):
        raise ValueError(f"saliency {tuple(s.shape)} and ground truth {tuple(truth.shape)} differ in size")
    positive = s.clamp_min(0)
    total = float(positive.sum())
    if total <= 0:
        return 0.0
    return float(positive[torch.from_numpy(np.ascontiguousarray(truth, dtype=bool))].sum()) / total


@dataclass
class EnergyTally:
    """Sum of shares and pairs per class; ``add`` a pair, ``merge`` another tally."""

    shares: dict[int, float] = field(default_factory=dict)
    pairs: dict[int, int] = field(default_factory=dict)

    def add(self, class_id: int, share: float) -> None:
        c = int(class_id)
        self.shares[c] = self.shares.get(c, 0.0) + float(share)
        self.pairs[c] = self.pairs.get(c, 0) + 1

    def merge(self, other: EnergyTally) -> EnergyTally:
        for c, n in other.pairs.items():
            self.shares[c] = self.shares.get(c, 0.0) + other.shares[c]
            self.pairs[c] = self.pairs.get(c, 0) + n
        return self

    def class_means(self) -> dict[int, float]:
        return {c: self.shares[c] / n for c, n in sorted(self.pairs.items())}

    def mean(self) -> float:
        """Mean over classes of the per-class mean share (NaN without any pair)."""
        means = list(self.class_means().values())
        return float(np.mean(means)) if means else float("nan")
