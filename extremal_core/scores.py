"""Area growth (supplement eq. 1) and the optimal area a*."""

from __future__ import annotations

import torch

SATURATION = 1.25


def normalized_scores(preserved: torch.Tensor, phi0: torch.Tensor, phi_min: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """v_a = min((Φ(m_a ⊗ x) - Φ_min) / (Φ_0 - Φ_min), 1.25): preserved `[B, A]`, Φ `[B]` -> `[B, A]`.

    When perturbing the whole image does not move the score (|Φ_0 - Φ_min| <= eps), there is
    nothing a mask has to preserve: every area counts as reaching the clean score (v = 1).
    """
    span = (phi0 - phi_min)[:, None]
    degenerate = span.abs() <= eps * torch.clamp(phi0.abs()[:, None], min=1.0)
    safe_span = torch.where(degenerate, torch.ones_like(span), span)
    v = (preserved - phi_min[:, None]) / safe_span
    v = torch.where(degenerate, torch.ones_like(v), v)
    return v.clamp(max=SATURATION)


def optimal_area(scores: torch.Tensor, areas: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """a*: the smallest area whose score reaches 1, per image: scores `[B, A]` -> (`[B]`, reached `[B]`).

    When no area reaches the clean score, a* is the largest area and `reached` is False.
    """
    order = sorted(range(len(areas)), key=lambda i: areas[i])
    sorted_areas = torch.tensor([areas[i] for i in order], dtype=torch.float32)
    hits = (scores[:, order] >= 1.0).cpu()
    reached = hits.any(dim=1)
    first = torch.where(reached, hits.float().argmax(dim=1), torch.full_like(reached, len(areas) - 1, dtype=torch.long))
    return sorted_areas[first], reached
