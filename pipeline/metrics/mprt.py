"""eMPRT and sMPRT, the repaired model parameter randomisation tests of Hedström et al. ("Sanity
Checks Revisited: An Exploration to Repair the Model Parameter Randomisation Test", XAI in Action
workshop, NeurIPS 2023; TMLR 2024), as Quantus 0.6.0 computes them
(``quantus/metrics/randomisation/efficient_mprt.py`` and ``smooth_mprt.py``, commit 85bc29d1).
Pure torch, batched over rows.

eMPRT (efficient MPRT) compares only the original and the fully randomised model. Per row, the
complexity of an explanation is the discrete entropy of its histogram (``discrete_entropy``:
``numpy.histogram(map, bins=100)`` over the map's own range, then Shannon's entropy in nats of
the normalised counts: Quantus' default ``complexity_func`` and its ``n_bins`` when no rule is
named); the complexity of the model's output is the entropy of its softmax (``output_entropy``).
``emprt_scores`` gives Quantus' score, the relative rise of the explanation's complexity
``(H(e_rand) - H(e)) / H(e)`` (higher: the explanation reacts to the randomisation), and its
``compute_extra_scores`` ratios, among them the rise relative to the model's own:
``(H(e_rand) / H(e)) / (H(y_rand) / H(y))`` (``scores_delta_explanation_vs_models``).

sMPRT (smooth MPRT) denoises each explanation by averaging it over ``N`` noisy copies of the input
before the comparison (``noisy_copies``: noise σ = ``magnitude`` x the input's own range, the last
copy noise-free; Quantus' defaults N = 50, magnitude 0.1), then compares the original model's
denoised explanation with the randomised model's by the Spearman rank correlation of their
absolute values (``spearman``; Quantus normalises by one positive scalar first, which ranks
ignore).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

BINS = 100  # Quantus' n_bins when no rule is named
SMOOTH_SAMPLES = 50  # Quantus' nr_samples (its ImageNet setting)
SMOOTH_MAGNITUDE = 0.1  # Quantus' noise_magnitude


def discrete_entropy(maps: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Entropy (nats) of each map's histogram of ``bins`` equal bins over its own [min, max]
    (``numpy.histogram``'s binning: the last bin closed; a constant map's range widened by 0.5
    each side, so it falls in one bin, entropy 0), in the maps' float type as numpy bins.
    ``maps`` ``[B, ...]`` -> ``[B]`` float64."""
    a = maps.reshape(maps.shape[0], -1)
    a = a if a.is_floating_point() else a.double()  # numpy bins in the map's own float type
    lo, hi = a.min(dim=1, keepdim=True).values, a.max(dim=1, keepdim=True).values
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    # numpy's index arithmetic, then its corrections against the edges of linspace(lo, hi, bins + 1)
    idx = ((a - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
    edges = torch.arange(bins + 1, dtype=a.dtype, device=a.device) * ((hi - lo) / bins) + lo  # [B, bins + 1]
    edges[:, -1:] = hi
    idx = idx - (a < edges.gather(1, idx)).long()
    idx = idx + ((a >= edges.gather(1, idx + 1)) & (idx != bins - 1)).long()
    counts = torch.zeros(a.shape[0], bins, dtype=torch.float64, device=a.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return _entropy(counts)


def _entropy(pk: torch.Tensor) -> torch.Tensor:
    """``scipy.stats.entropy(pk)`` per row of ``[B, K]`` non-negative weights (normalised here; 0 log 0 = 0)."""
    p = pk / pk.sum(dim=1, keepdim=True)
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim=1)


def output_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax of each row of ``[B, C]`` logits -> ``[B]`` float64."""
    return _entropy(torch.softmax(logits.double(), dim=1))


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, NaN where b is 0 (Quantus' ``b / a if a != 0 else np.nan``)."""
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.full_like(a, math.nan))


def emprt_scores(explanation: torch.Tensor, explanation_random: torch.Tensor, model: torch.Tensor,
                 model_random: torch.Tensor) -> dict[str, torch.Tensor]:
    """eMPRT per row from the four complexities (each ``[B]``): ``emprt`` (Quantus' score,
    NaN where the original explanation's entropy is 0), ``explanation_rise`` = H(e_rand) / H(e),
    ``model_rise`` = H(y_rand) / H(y), ``emprt_vs_model`` = explanation_rise / model_rise."""
    expl_rise, model_rise = _ratio(explanation_random, explanation), _ratio(model_random, model)
    return {
        "emprt": _ratio(explanation_random - explanation, explanation),
        "explanation_rise": expl_rise,
        "model_rise": model_rise,
        "emprt_vs_model": _ratio(expl_rise, model_rise),
    }


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N along the last axis of ``[B, N]``, ties given their mean rank (scipy's ``rankdata``)."""
    b, n = x.shape
    sorted_x, order = torch.sort(x, dim=1, stable=True)
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    run = torch.cumsum(new_run.long(), dim=1) - 1 + torch.arange(b, device=x.device)[:, None] * n  # global run ids
    pos = torch.arange(n, dtype=torch.float64, device=x.device).expand(b, n).reshape(-1)
    first = torch.full((b * n,), math.inf, dtype=torch.float64, device=x.device).scatter_reduce_(
        0, run.reshape(-1), pos, "amin")
    last = torch.full((b * n,), -math.inf, dtype=torch.float64, device=x.device).scatter_reduce_(
        0, run.reshape(-1), pos, "amax")
    mean_rank = ((first + last) / 2 + 1)[run]  # [B, N], in sorted order
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of each row pair of ``[B, ...]`` (Pearson of average ranks) -> ``[B]``
    float64; NaN where a row is constant (scipy's ``spearmanr``)."""
    ra = average_ranks(a.reshape(a.shape[0], -1).double())
    rb = average_ranks(b.reshape(b.shape[0], -1).double())
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    den = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    return _ratio((ra * rb).sum(dim=1), den)


def smprt_similarity(original: torch.Tensor, randomized: torch.Tensor) -> torch.Tensor:
    """sMPRT's score per row: Spearman of the absolute denoised maps ``[B, ...]`` -> ``[B]``
    (lower: the explanation depends more on the model's parameters)."""
    return spearman(original.abs(), randomized.abs())


def noisy_copies(x: torch.Tensor, n: int, magnitude: float = SMOOTH_MAGNITUDE,
                 generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """``n`` copies of the inputs ``[B, C, H, W]``, one at a time (memory of one): Gaussian noise
    of σ = ``magnitude`` x (each input's max - min) added to the first ``n - 1``, the last one
    clean (so N = 1 is the plain explanation)."""
    if n < 1:
        raise ValueError(f"sMPRT needs at least one sample, got {n}")
    dims = tuple(range(1, x.dim()))
    std = magnitude * (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True))
    for _ in range(n - 1):
        yield x + torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * std
    yield x
