"""The public call: `extremal_perturbation(model, images, targets, areas=..., variant=...)`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .network import engine_model
from .optimize import model_scores, optimize_masks, variant_inputs, variant_reward
from .perturbation import build_pyramid, perturb
from .rewards import Reward, get_reward
from .scores import normalized_scores, optimal_area
from .settings import ExtremalSettings

# On CPUs larger batches stop paying off (cache) past ~8 images x 3 areas (benchmarks/bench_core.py).
_CPU_MASKS_PER_BATCH = 24


@dataclass
class ExtremalResult:
    """Extremal perturbations of B images at A areas (tensors on the images' device unless noted).

    masks `[B, A, H, W]`; achieved_areas `[B, A]` (mean of each mask with its margin, the quantity
    the area constraint acts on); rewards `[B, A]` (the variant's reward at the final masks);
    preserved `[B, A]` = Φ_c(m_a ⊗ x); scores `[B, A]` = v_a (<= 1.25); phi0, phi_min `[B]`;
    optimal_area `[B]` (a*, CPU) with optimal_area_reached `[B]` (CPU); history `[B, A, 2, T]`
    (reward, area penalty per iteration, CPU) when asked for; seconds `[B]` (CPU): optimization
    time attributed to each image.
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


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients while optimizing; the caller's state comes back after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be a 4-D tensor [B, C, H, W], got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (preprocessed), got {images.dtype}")


def as_targets(targets: int | Sequence[int] | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """One target class per image as a long tensor `[B]`; a single int applies to all images."""
    if isinstance(targets, bool):
        raise TypeError("targets must be class indices, got a bool")
    if isinstance(targets, int):
        t = torch.full((batch,), targets, dtype=torch.long)
    else:
        t = torch.as_tensor(targets)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
        t = t.reshape(-1).long()
    if t.numel() != batch:
        raise ValueError(f"expected one target per image ({batch}), got {t.numel()}")
    return t.to(device)


def check_targets(targets: torch.Tensor, num_classes: int) -> None:
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"target {int(bad[0])} is out of range for a model with {num_classes} classes (valid: 0..{num_classes - 1})"
        )


def prepare_call(
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    reward: str | Reward | None,
    settings: ExtremalSettings | None,
    overrides: dict,
) -> tuple[ExtremalSettings, Reward, torch.Tensor]:
    """Validate a public call: the settings with keyword overrides, the reward, targets `[B]`."""
    check_images(images)
    base = settings if settings is not None else ExtremalSettings()
    if isinstance(reward, str):
        overrides = {**overrides, "reward": reward}
    resolved = base.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    reward_fn = get_reward(reward if callable(reward) else resolved.reward)
    return resolved, reward_fn, as_targets(targets, images.shape[0], images.device)


def masks_per_batch(model: torch.nn.Module, images: torch.Tensor, settings: ExtremalSettings) -> int:
    """How many masks go through the network at once.

    An explicit `max_masks_per_batch` wins. On CUDA the bound comes from the memory budget
    (default: 80 % of free memory) and a one-iteration probe of the peak memory per mask.
    """
    if settings.max_masks_per_batch is not None:
        return settings.max_masks_per_batch
    if images.device.type != "cuda":
        return _CPU_MASKS_PER_BATCH
    free, _ = torch.cuda.mem_get_info(images.device)
    budget = (settings.memory_budget_mb * 2**20) if settings.memory_budget_mb else 0.8 * free
    torch.cuda.reset_peak_memory_stats(images.device)
    base = torch.cuda.memory_allocated(images.device)
    probe = settings.with_overrides(max_iter=1, keep_history=False)
    optimize_masks(model, images[:1], torch.zeros(1, dtype=torch.long, device=images.device), get_reward("simple"), probe)
    per_mask = (torch.cuda.max_memory_allocated(images.device) - base) / (len(settings.areas) * _copies(settings))
    return max(1, int(budget // max(per_mask, 1)))


def _copies(settings: ExtremalSettings) -> int:
    return 2 if settings.variant == "dual" else 1


def extremal_perturbation(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    areas: float | Sequence[float] | None = None,
    variant: str | None = None,
    *,
    reward: str | Reward | None = None,
    settings: ExtremalSettings | None = None,
    **overrides,
) -> ExtremalResult:
    """Extremal perturbations of `images` `[B, C, H, W]` for `targets` (one class per image).

    Settings come from `settings` (an `ExtremalSettings`) with any field overridden by keyword
    (`max_iter=300`, `perturbation="fade"`, ...). `reward` is a registered name or a callable
    `(scores [N, C], targets [N]) -> [N]`. The model is left as it was found.
    """
    settings, reward_fn, t = prepare_call(images, targets, reward, settings, {"areas": areas, "variant": variant, **overrides})
    b, a = images.shape[0], len(settings.areas)

    with frozen(model):
        net = engine_model(model, settings)
        per_batch = max(1, masks_per_batch(net, images, settings) // (a * _copies(settings)))
        parts = []
        for lo in range(0, b, per_batch):
            hi = min(b, lo + per_batch)
            start = time.perf_counter()
            parts.append(_explain_batch(net, images[lo:hi], t[lo:hi], reward_fn, settings))
            if images.device.type == "cuda":
                torch.cuda.synchronize(images.device)
            parts[-1]["seconds"] = torch.full((hi - lo,), (time.perf_counter() - start) / (hi - lo))
    out = {k: torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None for k in parts[0]}

    scores = normalized_scores(out["preserved"], out["phi0"], out["phi_min"])
    best, reached = optimal_area(scores, settings.areas)
    return ExtremalResult(
        areas=settings.areas,
        targets=t,
        scores=scores,
        optimal_area=best,
        optimal_area_reached=reached,
        **out,
    )


def _explain_batch(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, reward: Reward, settings: ExtremalSettings
) -> dict[str, torch.Tensor | None]:
    """Clean and fully perturbed scores, the optimization, and the final masks' rewards for one micro-batch."""
    b, c, h, w = images.shape
    a = len(settings.areas)
    with torch.no_grad():
        clean = model_scores(model, images, settings)
        check_targets(targets, clean.shape[1])
        pyramid = build_pyramid(images, settings.num_levels, settings.max_blur, settings.perturbation)
        phi_min = reward(model_scores(model, pyramid[:, 0], settings), targets)
    found = optimize_masks(model, images, targets, reward, settings, pyramid)
    with torch.no_grad():
        per_mask = targets.repeat_interleave(a)
        final = model_scores(
            model, variant_inputs(pyramid, found.masks, settings.variant, settings.native_cpu_kernels), settings
        )
        rewards = variant_reward(final, per_mask, reward, settings.variant)
        if settings.variant == "preserve":
            preserved = rewards
        else:
            kept = perturb(pyramid, found.masks, settings.native_cpu_kernels).reshape(-1, c, h, w)
            preserved = reward(model_scores(model, kept, settings), per_mask)
    return {
        "masks": found.masks,
        "achieved_areas": found.achieved_areas,
        "rewards": rewards.view(b, a),
        "preserved": preserved.view(b, a),
        "phi0": reward(clean, targets),
        "phi_min": phi_min,
        "history": found.history,
    }
