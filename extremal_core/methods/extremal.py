"""Extremal perturbation (the paper's method) as a prepared explainer: B images x A areas per batch.

`ExtremalExplainer(model, areas=..., ...)` makes the private, rewritten model copy once; each
`run(images, targets)` returns an `ExtremalResult`, `explain` the same as an `Explanation`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..inputs import check_targets, checked_call, frozen, resolve_settings
from ..network import configure_backends, engine_model
from ..optimize import model_scores, optimize_masks, variant_inputs, variant_reward
from ..perturbation import build_pyramid, perturb
from ..rewards import Reward, get_reward
from ..scores import normalized_scores, optimal_area
from ..settings import ExtremalSettings
from .card import Column, MethodCard, Smoothing
from .explanation import Explanation
from .registry import register_method

# On CPUs larger batches stop paying off (cache) past ~8 images x 3 areas (benchmarks/bench_core.py).
_CPU_MASKS_PER_BATCH = 24

# The per-row fields of an ExtremalResult that an Explanation carries as values.
_ROW_VALUES = (
    "rewards", "preserved", "scores", "phi0", "phi_min", "optimal_area", "optimal_area_reached", "achieved_areas", "seconds",
)


@dataclass
class ExtremalResult:
    """Extremal perturbations of B images at A areas (tensors on the images' device unless noted).

    masks `[B, A, H, W]`; achieved_areas `[B, A]` (mean of each mask with its margin, the quantity
    the area constraint acts on); rewards `[B, A]` (the variant's reward at the final masks);
    preserved `[B, A]` = Φ_c(m_a ⊗ x); scores `[B, A]` = v_a (<= 1.25); phi0, phi_min `[B]`;
    optimal_area `[B]` (a*, CPU) with optimal_area_reached `[B]` (CPU); history `[B, A, 2, T]`
    (reward, area penalty per iteration, CPU) when asked for; seconds `[B]` (CPU): optimization
    time attributed to each image; iterations `[B, A]` (CPU): the iterations each mask went
    through the network (`max_iter` unless `stop_tolerance` froze it earlier).
    """

    areas: tuple[float, ...]
    targets: torch.Tensor
    masks: torch.Tensor
    achieved_areas: torch.Tensor
    rewards: torch.Tensor
    preserved: torch.Tensor
    scores: torch.Tensor
    phi0: torch.Tensor
    phi_min: torch.Tensor
    optimal_area: torch.Tensor
    optimal_area_reached: torch.Tensor
    seconds: torch.Tensor
    history: torch.Tensor | None = None
    iterations: torch.Tensor | None = None


def as_explanation(result: ExtremalResult) -> Explanation:
    """maps = the masks `[B, A, H, W]`, labels = the areas, values = the result's per-row fields."""
    values = {name: getattr(result, name) for name in _ROW_VALUES}
    if result.history is not None:
        values["history"] = result.history
    return Explanation(maps=result.masks, labels=result.areas, values=values)


PHI0 = Column("phi0", "float32", "[]", "the target's reward on the clean image")

# Per row: A = len(areas). The report draws the masks on one [0, 1] scale and frames a*; the
# pointing game smooths them (sigma = 0.09 x the shorter side, zero padding), as TorchRay's benchmark does.
CARD = MethodCard(
    columns=(
        Column("preserved", "list<float32>", "[A]", "Φ_c(m_a ⊗ x): the target's reward with each mask's region kept"),
        Column("scores", "list<float32>", "[A]", "v_a, the normalised score of each area (<= 1.25)"),
        PHI0,
        Column("phi_min", "float32", "[]", "the target's reward on the fully perturbed image"),
        Column("optimal_area", "float32", "[]", "a*, the smallest area whose v_a reaches 1 (else the largest)"),
        Column("optimal_area_reached", "bool", "[]", "whether some v_a reached 1"),
    ),
    maps="mask",
    smooth=Smoothing(0.09, "shorter", "zeros"),
    engine_settings=True,
)


@register_method("extremal", card=CARD)
class ExtremalExplainer:
    """Extremal perturbations with one model and one set of settings, over many batches.

    `settings` (an `ExtremalSettings`) with any field overridden by keyword (`areas=[0.1]`,
    `max_iter=300`, ...); `reward`: a registered name or a callable `(scores [N, C], targets [N])
    -> [N]`. Prepared here, once: the model's private copy with the settings' rewrites (the
    caller's model is left as it was found). On CUDA the micro-batch bound comes from a memory
    probe that needs an image: it runs on the first batch of each image size and is kept.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        settings: ExtremalSettings | None = None,
        reward: str | Reward | None = None,
        **overrides,
    ):
        self.settings, self.reward = resolve_settings(settings, reward, overrides)
        with frozen(model):  # BatchNorm folds only in eval mode; the caller's mode comes back
            self.model = engine_model(model, self.settings)
        self._images_per_batch: dict[tuple, int] = {}

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return ("settings", "reward", *ExtremalSettings.group_of())

    def explain(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> Explanation:
        """maps `[B, A, H, W]` (the masks), labels: the areas, values: `ExtremalResult`'s rows."""
        return as_explanation(self.run(images, targets))

    def run(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> ExtremalResult:
        """The masks of `images` `[B, C, H, W]` for `targets` (one class per image, or one int for all)."""
        t = checked_call(images, targets)
        settings, b = self.settings, images.shape[0]
        configure_backends(settings, images.device)
        per_batch = self.images_per_batch(images)
        parts = []
        for lo in range(0, b, per_batch):
            hi = min(b, lo + per_batch)
            start = time.perf_counter()
            parts.append(explain_batch(self.model, images[lo:hi], t[lo:hi], self.reward, settings))
            if images.device.type == "cuda":
                torch.cuda.synchronize(images.device)
            parts[-1]["seconds"] = torch.full((hi - lo,), (time.perf_counter() - start) / (hi - lo))
        out = {k: torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None for k in parts[0]}

        scores = normalized_scores(out["preserved"], out["phi0"], out["phi_min"])
        best, reached = optimal_area(scores, settings.optim.areas)
        return ExtremalResult(
            areas=settings.optim.areas, targets=t, scores=scores, optimal_area=best, optimal_area_reached=reached, **out
        )

    def images_per_batch(self, images: torch.Tensor) -> int:
        """Images per micro-batch for images of this device and size, measured once."""
        key = (images.device, tuple(images.shape[1:]), images.dtype)
        if key not in self._images_per_batch:
            masks = masks_per_batch(self.model, images, self.settings)
            self._images_per_batch[key] = max(1, masks // (len(self.settings.optim.areas) * _copies(self.settings)))
        return self._images_per_batch[key]


def masks_per_batch(model: torch.nn.Module, images: torch.Tensor, settings: ExtremalSettings) -> int:
    """How many masks go through the network at once.

    An explicit `max_masks_per_batch` wins. On CUDA the bound comes from the memory budget
    (default: 80 % of the memory free on the device plus what PyTorch's allocator holds
    unused) and a one-iteration probe of the peak memory per mask.
    """
    if settings.execution.max_masks_per_batch is not None:
        return settings.execution.max_masks_per_batch
    if images.device.type != "cuda":
        return _CPU_MASKS_PER_BATCH
    free, _ = torch.cuda.mem_get_info(images.device)
    cached = torch.cuda.memory_reserved(images.device) - torch.cuda.memory_allocated(images.device)
    budget = (settings.execution.memory_budget_mb * 2**20) if settings.execution.memory_budget_mb else 0.8 * (free + cached)
    torch.cuda.reset_peak_memory_stats(images.device)
    base = torch.cuda.memory_allocated(images.device)
    probe = settings.with_overrides(max_iter=1, keep_history=False)
    optimize_masks(model, images[:1], torch.zeros(1, dtype=torch.long, device=images.device), get_reward("simple"), probe)
    per_mask = (torch.cuda.max_memory_allocated(images.device) - base) / (len(settings.optim.areas) * _copies(settings))
    return max(1, int(budget // max(per_mask, 1)))


def _copies(settings: ExtremalSettings) -> int:
    return 2 if settings.optim.variant == "dual" else 1


def explain_batch(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, reward: Reward, settings: ExtremalSettings
) -> dict[str, torch.Tensor | None]:
    """Clean and fully perturbed scores, the optimization, and the final masks' rewards for one micro-batch."""
    b, c, h, w = images.shape
    a = len(settings.optim.areas)
    with torch.no_grad():
        clean = model_scores(model, images, settings)
        check_targets(targets, clean.shape[1])
        pyramid = build_pyramid(images, settings.masks.num_levels, settings.masks.max_blur, settings.masks.perturbation)
        phi_min = reward(model_scores(model, pyramid[:, 0], settings), targets)
    found = optimize_masks(model, images, targets, reward, settings, pyramid)
    with torch.no_grad():
        per_mask = targets.repeat_interleave(a)
        final = model_scores(
            model, variant_inputs(pyramid, found.masks, settings.optim.variant, settings.execution.native_cpu_kernels), settings
        )
        rewards = variant_reward(final, per_mask, reward, settings.optim.variant)
        if settings.optim.variant == "preserve":
            preserved = rewards
        else:
            kept = perturb(pyramid, found.masks, settings.execution.native_cpu_kernels).reshape(-1, c, h, w)
            preserved = reward(model_scores(model, kept, settings), per_mask)
    return {
        "masks": found.masks,
        "achieved_areas": found.achieved_areas,
        "rewards": rewards.view(b, a),
        "preserved": preserved.view(b, a),
        "phi0": reward(clean, targets),
        "phi_min": phi_min,
        "history": found.history,
        "iterations": found.iterations,
    }
