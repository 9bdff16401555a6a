"""The area constraint by vector sorting (paper eq. 5, supplement section 2.1).

R_a(m) = mean((vecsort(m) - r_a)²), r_a = int(N·(1 - a)) zeros followed by ones. Sorting is
differentiable in its values: autograd routes each gradient back to the entry that was sorted
into that place (the supplement's "un-sort").
"""

from __future__ import annotations

import torch


def reference_zeros(num_entries: int, area: float) -> int:
    """How many entries of r_a are zero: int(N·(1 - a)), as in the reference implementation."""
    return int(num_entries * (1.0 - area))


def area_loss(masks: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """R_a per mask: masks `[K, ...]` (flattened per mask) and areas `[K]` -> `[K]`.

    A stable sort keeps tied values in index order, so the gradient (which depends on how ties
    are broken) is the same whatever else shares the batch.
    """
    flat = masks.reshape(masks.shape[0], -1)
    n = flat.shape[1]
    zeros = torch.tensor([reference_zeros(n, float(a)) for a in areas], device=flat.device)
    reference = (torch.arange(n, device=flat.device)[None, :] >= zeros[:, None]).to(flat.dtype)
    ranked = torch.sort(flat, dim=1, stable=True).values
    return ((ranked - reference) ** 2).mean(dim=1)


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """The area a mask actually covers, its mean value: `[K, ...]` -> `[K]`."""
    return masks.reshape(masks.shape[0], -1).mean(dim=1)
