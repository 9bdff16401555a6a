"""`Explanation`: what every attribution method returns, whatever it computes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Explanation:
    """Saliency maps of B images, M maps per image, in one shape for every method.

    maps `[B, M, H, W]` float, at the images' resolution; labels: M names of the maps (the areas
    for extremal perturbation, `("center",)` for the centre baseline); values: the method's own
    per-row values, each `[B, ...]` (e.g. extremal's `scores` `[B, A]`, `optimal_area` `[B]`).
    """

    maps: torch.Tensor
    labels: tuple
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here so that a user's registered method cannot return a shape the pipeline misreads.
        if not isinstance(self.maps, torch.Tensor) or self.maps.dim() != 4 or not self.maps.is_floating_point():
            shape = list(self.maps.shape) if isinstance(self.maps, torch.Tensor) else type(self.maps).__name__
            raise ValueError(f"maps must be a float tensor [B, M, H, W], got {shape}")
        self.labels = tuple(self.labels)
        if len(self.labels) != self.maps.shape[1]:
            raise ValueError(f"{self.maps.shape[1]} maps per image but {len(self.labels)} labels: {self.labels}")
        for name, value in self.values.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != self.maps.shape[0]:
                raise ValueError(f"value {name!r} must be a tensor [B, ...] with B = {self.maps.shape[0]}")

    @property
    def batch_size(self) -> int:
        return self.maps.shape[0]
