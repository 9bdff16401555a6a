"""The area constraint by vector sorting (paper eq. 5, supplement section 2.1).

R_a(m) = mean((vecsort(m) - r_a)²), r_a = int(N·(1 - a)) zeros followed by ones. Sorting is
differentiable in its values: each gradient goes back to the entry that was sorted into that
place (the supplement's "un-sort"), i.e. 2·(m - r)/N with r un-sorted: 1 on the N - z largest
entries, 0 elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch


def reference_zeros(num_entries: int, area: float) -> int:
    """How many entries of r_a are zero: int(N·(1 - a)), as in the reference implementation."""
    return int(num_entries * (1.0 - area))


def area_loss(masks: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """R_a per mask: masks `[K, ...]` (flattened per mask) and areas `[K]` -> `[K]`.

    Σ (sort(m) - r)² = Σ m² - 2·(sum of the N - z largest entries) + (N - z), so only the set of
    the N - z largest entries matters, not the full order: it equals Σ (m - t)² with t the
    indicator of that set, which a partition finds in linear time. Ties at the threshold go to the later indices, as a stable ascending sort would
    rank them, so the gradient does not depend on what else shares the batch.
    """
    flat = masks.reshape(masks.shape[0], -1)
    n = flat.shape[1]
    zeros = [reference_zeros(n, float(a)) for a in areas]
    top = torch.zeros_like(flat, dtype=torch.bool)
    for z in sorted(set(zeros)):
        rows = [i for i, zi in enumerate(zeros) if zi == z]
        if z < n:
            top[rows] = _largest(flat[rows].detach(), n - z)
    return (flat - top.to(flat.dtype)).square().mean(dim=1)


def _largest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean `[R, N]`: the `count` largest entries per row; ties at the threshold by later index."""
    n = values.shape[1]
    threshold = _kth_smallest(values, n - count + 1)
    above = values > threshold
    tied = values == threshold
    need = count - above.sum(dim=1, keepdim=True)
    if values.device.type == "cpu" and bool((tied.sum(dim=1, keepdim=True) == need).all()):
        return above | tied  # no tie straddles the threshold (checked on CPU only: no GPU sync)
    from_end = tied.flip(1).cumsum(dim=1).flip(1)  # tied entries at or after each position
    return above | (tied & (from_end <= need))


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """`[R, N]` -> `[R, 1]`, the k-th smallest (1-based) entry of each row."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        # numpy's introselect is ~10x faster than torch.kthvalue on a CPU.
        part = np.partition(values.numpy(), k - 1, axis=1)
        return torch.from_numpy(np.ascontiguousarray(part[:, k - 1 : k]))
    return values.kthvalue(k, dim=1, keepdim=True).values


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """The area a mask actually covers, its mean value: `[K, ...]` -> `[K]`."""
    return masks.reshape(masks.shape[0], -1).mean(dim=1)
