"""The public calls, one argument order for both: `extremal_perturbation(model, images, targets,
areas=..., variant=...)` and `channel_perturbation(model, images, targets, areas=..., layer=...)`.

Each builds its method's explainer and runs it once. To explain many batches with one model,
build the explainer once instead (`make_explainer("extremal", model, ...)`): the model's
preparation then happens once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .channels import ChannelResult
from .methods.extremal import ExtremalExplainer, ExtremalResult
from .methods.extremal_channels import ChannelExplainer
from .rewards import Reward
from .settings import ExtremalSettings

__all__ = ["ChannelResult", "ExtremalResult", "channel_perturbation", "extremal_perturbation"]


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
    explainer = ExtremalExplainer(model, settings=settings, reward=reward, areas=areas, variant=variant, **overrides)
    return explainer.run(images, targets)


def channel_perturbation(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor,
    areas: float | Sequence[float] | None = None,
    variant: str | None = None,
    *,
    layer: str,
    reward: str | Reward | None = None,
    settings: ExtremalSettings | None = None,
    **overrides,
) -> ChannelResult:
    """Channel masks of `images` `[B, C, H, W]` at `layer` (a name from `model.named_modules()`);
    settings and reward as in `extremal_perturbation`."""
    explainer = ChannelExplainer(model, layer=layer, settings=settings, reward=reward, areas=areas, variant=variant, **overrides)
    return explainer.run(images, targets)
