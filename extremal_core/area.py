"""The area constraint by vector sorting (paper eq. 5, supplement section 2.1).

R_a(m) = mean((vecsort(m) - r_a)²), r_a = int(N·(1 - a)) zeros followed by ones. Sorting is
differentiable in its values: each entry's gradient is 2·(m - r)/N with r the reference value
of the place the entry was sorted into (the supplement's "un-sort").

Ties. At iteration 0 every parameter is 1, so the mask holds large groups of exactly equal
values and the threshold (the place where r steps from 0 to 1) cuts through one of them. A sort
then sends 1 to some members of the group and 0 to others by index order, and float rounding of
1e-7 (another CPU, kernel build or GPU) decides which: the optimization then follows another
branch (mask correlation down to 0.5 between two runs). Here the entries within `tie_tolerance`
of the threshold value form one group, and each member gets the mean of r over the places the
group occupies. That is a valid subgradient of R_a (the convex hull of the sorted gradients),
symmetric in the group's members, and rounding-sized changes of the values cannot move it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Masks lie in [0, 1]. Two implementations of the smooth max differ by ~1e-6 there, and values
# that are equal in exact arithmetic by a few 1e-7 in one implementation; measured in
# benchmarks/reproducibility.py: 0 (exact ties only) splits like the reference, 1e-5 does not.
DEFAULT_TIE_TOLERANCE = 1e-5


def reference_zeros(num_entries: int, area: float) -> int:
    """How many entries of r_a are zero: int(N·(1 - a)), as in the reference implementation."""
    return int(num_entries * (1.0 - area))


@dataclass(frozen=True)
class AreaPlan:
    """The area constraint's per-mask constants, resolved once per batch so that the loop reads
    no number back from the device: `total_ones` `[K]` (how many ones each r_a holds) and the
    groups of masks that share a count, `(count, rows [R] or None for all rows)` (device tensors)."""

    num_entries: int
    total_ones: torch.Tensor
    groups: tuple[tuple[int, torch.Tensor | None], ...]


def area_plan(areas: Sequence[float], num_entries: int, device: torch.device | str = "cpu") -> AreaPlan:
    """The plan for masks of `num_entries` entries with these per-mask areas (floats, `[K]`)."""
    ones = [num_entries - reference_zeros(num_entries, float(a)) for a in areas]
    groups = []
    for count in sorted(set(ones) - {0}):
        rows = [i for i, c in enumerate(ones) if c == count]
        index = None if len(rows) == len(ones) else torch.tensor(rows, device=device)
        groups.append((count, index))
    total = torch.tensor(ones, dtype=torch.float32, device=device)
    return AreaPlan(num_entries, total, tuple(groups))


def area_loss(
    masks: torch.Tensor, areas: AreaPlan | torch.Tensor | Sequence[float], tie_tolerance: float = DEFAULT_TIE_TOLERANCE
) -> torch.Tensor:
    """R_a per mask: masks `[K, ...]` (flattened per mask) and areas `[K]` (or their `AreaPlan`,
    which the optimization loop passes: no host sync) -> `[K]`.

    Σ (sort(m) - r)² = Σ m² - 2·Σ m·t + Σ r with t the un-sorted reference, so the loss needs
    only t, which a partition finds in linear time; with the tie rule of the module docstring,
    t is the group's share of ones inside the tied group. The value equals R_a exactly when the
    group's members are exactly equal (within 2·tie_tolerance otherwise); the gradient is
    2·(m - t)/N, per mask, whatever else shares the batch.
    """
    flat = masks.reshape(masks.shape[0], -1)
    n = flat.shape[1]
    plan = areas if isinstance(areas, AreaPlan) else area_plan(torch.as_tensor(areas).tolist(), n, flat.device)
    target = torch.zeros_like(flat)
    values = flat.detach()
    for count, rows in plan.groups:
        if rows is None:
            target = reference_share(values, count, tie_tolerance)
        else:
            target.index_copy_(0, rows, reference_share(values.index_select(0, rows), count, tie_tolerance))
    total_ones = plan.total_ones.to(flat.dtype)
    return (flat.square() - 2.0 * flat * target).mean(dim=1) + total_ones / n


def reference_share(values: torch.Tensor, count: int, tie_tolerance: float) -> torch.Tensor:
    """`[R, N]` -> `[R, N]`: the un-sorted reference r for ones on the `count` largest entries.

    1 above the tied group, 0 below it, and count-minus-above over the group's size inside it:
    the group is every entry within `tie_tolerance` of the threshold value (the smallest of the
    `count` largest entries).
    """
    n = values.shape[1]
    threshold = _kth_smallest(values, n - count + 1)
    above = values > threshold + tie_tolerance
    group = (values >= threshold - tie_tolerance) & ~above
    share = (count - above.sum(dim=1, keepdim=True)) / group.sum(dim=1, keepdim=True)
    return torch.where(above, 1.0, torch.where(group, share.to(values.dtype), 0.0)).to(values.dtype)


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """`[R, N]` -> `[R, 1]`, the k-th smallest (1-based) entry of each row."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        # numpy's introselect is ~10x faster than torch.kthvalue on a CPU (both select exactly the
        # same value); a compiled graph keeps kthvalue, which it can capture.
        part = np.partition(values.numpy(), k - 1, axis=1)
        return torch.from_numpy(np.ascontiguousarray(part[:, k - 1 : k]))
    return values.kthvalue(k, dim=1, keepdim=True).values


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """The area a mask actually covers, its mean value: `[K, ...]` -> `[K]`."""
    return masks.reshape(masks.shape[0], -1).mean(dim=1)
