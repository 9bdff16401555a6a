"""Rewards: how much a perturbed image still shows the target class.

A reward maps class scores `[N, C]` and targets `[N]` to one value per image `[N]`, in the
preserve sense (larger = more of the class). The variants combine it: preserve uses Φ(m ⊗ x),
delete -Φ((1 - m) ⊗ x), dual the difference. Register your own with `register_reward`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_REWARDS: dict[str, Reward] = {}


def register_reward(name: str, fn: Reward | None = None):
    """Add a reward by name; usable as `register_reward("mine", fn)` or as a decorator."""

    def add(f: Reward) -> Reward:
        _REWARDS[name] = f
        return f

    return add if fn is None else add(fn)


def get_reward(name_or_fn: str | Reward) -> Reward:
    if callable(name_or_fn):
        return name_or_fn
    try:
        return _REWARDS[name_or_fn]
    except KeyError:
        raise ValueError(f"unknown reward {name_or_fn!r}; valid rewards: {', '.join(sorted(_REWARDS))}") from None


def available_rewards() -> list[str]:
    return sorted(_REWARDS)


def class_scores(output: torch.Tensor) -> torch.Tensor:
    """Model output to `[N, C]` float32 scores; fully convolutional `[N, C, h, w]` is averaged over space."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() == 4:
        output = output.mean(dim=(2, 3))
    if output.dim() != 2:
        raise ValueError(f"the model must return logits [N, C] or [N, C, h, w], got shape {list(output.shape)}")
    return output.float()


@register_reward("simple")
def simple_reward(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Φ_c: the target's score."""
    return scores.gather(1, targets[:, None]).squeeze(1)


@register_reward("contrastive")
def contrastive_reward(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Φ_c - max_{c' != c} Φ_c'."""
    others = scores.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
    return simple_reward(scores, targets) - others


BACKWARDS = ("logit", "pointing")


class ScoreHead(torch.nn.Module):
    """``model`` with its output as class scores ``[B, C]`` for the gradient methods, from a
    fully convolutional score map ``y`` ``[B, C, h, w]`` by ``backward``:

    - ``logit``: the map's mean over positions (as ``class_scores``); its gradient is TorchRay's
      default one-hot backward signal over every position, divided by h·w;
    - ``pointing``: Σ_u p_u y_u with p = softmax_u(y) held constant, whose gradient with respect
      to the map is TorchRay's ``get_pointing_gradient`` (exp of the target's map normalised to sum
      to 1: the positions that score the class highest are followed back).

    A ``[B, C]`` output passes unchanged (one position: both signals are the logit's).
    """

    def __init__(self, model: torch.nn.Module, backward: str = "logit"):
        super().__init__()
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
        self.model, self.backward = model, backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if y.dim() != 4:
            return y
        flat = y.flatten(2)  # [B, C, h*w]
        if self.backward == "logit":
            return flat.mean(dim=2)
        return (torch.softmax(flat.detach(), dim=2) * flat).sum(dim=2)
