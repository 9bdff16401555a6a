"""What "the same masks" means, shared by the reproducibility tests, the GPU tests and
`benchmarks/reproducibility.py`: float-rounding-sized noise on the masks a mask generator makes
(the change another CPU, kernel build or GPU makes), and the per-mask correlation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from extremal_core.masks import SmoothMaskGenerator


@contextmanager
def mask_noise(engine: str, relative: float, first_only: bool, seed: int = 1234):
    """Multiply the masks a mask generator makes by (1 + relative·z), z a fixed N(0, 1) pattern per
    shape, re-clamped to [0, 1]: a float-rounding-sized change, by wrapping (not changing) the
    generator's `generate`. `engine`: "ours" (`SmoothMaskGenerator`, masks `[K, H, W]`) or
    "torchray" (`MaskGenerator`, `[A, 1, H, W]`). `first_only`: only the first mask of each
    generator, i.e. iteration 0 of each optimization.
    """
    if engine == "ours":
        cls, crop = SmoothMaskGenerator, lambda g: (g.geometry.margin_px, g.geometry.height, g.geometry.width)
    else:
        from torchray.attribution.extremal_perturbation import MaskGenerator as cls

        crop = lambda g: (round(g.margin), *g.shape)  # noqa: E731
    original = cls.generate
    patterns: dict = {}

    def noisy_generate(self, params):
        masks, full = original(self, params)
        if first_only and getattr(self, "_noise_done", False):
            return masks, full
        self._noise_done = True
        key = (tuple(full.shape), full.device, full.dtype)
        if key not in patterns:
            z = torch.randn(full.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            patterns[key] = z.to(device=full.device, dtype=full.dtype)
        full = (full * (1 + relative * patterns[key])).clamp(0, 1)
        m, h, w = crop(self)
        return full[..., m : m + h, m : m + w], full

    cls.generate = noisy_generate
    try:
        yield
    finally:
        cls.generate = original


def mask_correlations(masks: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each (image, area) mask with its reference: `[N, A, H, W]` on any
    devices -> float64 `[N, A]` on the CPU."""
    a = masks.detach().double().cpu().flatten(2)
    b = reference.detach().double().cpu().flatten(2)
    a = a - a.mean(dim=2, keepdim=True)
    b = b - b.mean(dim=2, keepdim=True)
    return (a * b).sum(dim=2) / (a.norm(dim=2) * b.norm(dim=2))
