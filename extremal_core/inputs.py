"""What every public call checks: images, targets, settings and reward, and the caller's model state."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .rewards import Reward, get_reward
from .settings import ExtremalSettings


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients inside; the caller's state comes back after."""
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


def checked_call(images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Validate one call's images `[B, C, H, W]`; its targets as a long tensor `[B]` on their device."""
    check_images(images)
    return as_targets(targets, images.shape[0], images.device)


def resolve_settings(
    settings: ExtremalSettings | None, reward: str | Reward | None, overrides: dict
) -> tuple[ExtremalSettings, Reward]:
    """The settings with keyword overrides (None means "not given") and the reward function.

    A reward given by name is also recorded in the settings; a callable is used as is.
    """
    base = settings if settings is not None else ExtremalSettings()
    if isinstance(reward, str):
        overrides = {**overrides, "reward": reward}
    resolved = base.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    return resolved, get_reward(reward if callable(reward) else resolved.optim.reward)
