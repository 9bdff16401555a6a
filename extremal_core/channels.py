"""Channel attribution at an intermediate layer (paper section 3.4, supplement section 4).

The network is split at a named layer, Φ = Φ_2 ∘ Φ_1. A mask m in [0, 1]^K over the layer's K
channels (no spatial smoothing) perturbs the activations, m ⊙ Φ_1(x) for preserve, under the
same vecsort area constraint (over channels) and the same optimizer as the spatial masks.
The split is done with a forward hook, so any model works without being rewritten; the input
is not jittered, since flipping the image would change the activations being masked. The
prepared explainer and `channel_perturbation` are in `methods/extremal_channels.py` and `api.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .area import area_loss, area_plan
from .inputs import check_targets
from .optimize import MaskStepper, model_scores, variant_reward
from .rewards import Reward
from .settings import ExtremalSettings


@dataclass
class ChannelResult:
    """channel_masks `[B, A, K]`; saliency `[B, A, H, W]` = Σ_k (1 - m_k)·|Φ_1(x)_k| upsampled to
    the image (the activation the mask removes); rewards `[B, A]`; phi0 `[B]`; history
    `[B, A, 2, T]` when asked for."""

    areas: tuple[float, ...]
    layer: str
    targets: torch.Tensor
    channel_masks: torch.Tensor
    saliency: torch.Tensor
    rewards: torch.Tensor
    phi0: torch.Tensor
    history: torch.Tensor | None = None


def find_layer(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    modules.pop("", None)
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not in the model; valid layers: {', '.join(modules)}")
    return modules[layer]


class _ChannelMask:
    """A forward hook that replaces the layer's output with masked copies of cached activations."""

    def __init__(self, activations: torch.Tensor):
        self.activations = activations  # [N, K, ...], one row per mask
        self.masks: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        if self.masks is None:
            return output
        shape = self.masks.shape + (1,) * (self.activations.dim() - 2)
        return self.activations * self.masks.view(shape)


def optimize_channels(
    model: torch.nn.Module,
    module: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    reward: Reward,
    settings: ExtremalSettings,
) -> dict[str, torch.Tensor | None]:
    """Channel masks of one micro-batch at `module` (a module of `model`, which must be frozen):
    images `[B, C, H, W]`, targets `[B]` -> the ChannelResult fields, batched (saliency None for a
    layer without spatial extent)."""
    if settings.optim.schedule != "paper" or settings.optim.stop_tolerance is not None or settings.optim.warm_start is not None:
        raise ValueError("schedule='fast', stop_tolerance and warm_start are measured for extremal perturbation only; "
                         "channel perturbation runs the paper schedule")
    b, _, h, w = images.shape
    a = len(settings.optim.areas)
    captured: list[torch.Tensor] = []
    grab = module.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            clean = model_scores(model, images, settings)
    finally:
        grab.remove()
    check_targets(targets, clean.shape[1])
    activations = captured[0].float()
    if activations.dim() < 2:
        raise ValueError(f"layer output must be [B, K, ...] to mask channels, got shape {list(activations.shape)}")
    k = activations.shape[1]

    copies = 2 if settings.optim.variant == "dual" else 1
    per_mask = activations.repeat_interleave(a, dim=0)
    hook = _ChannelMask(per_mask.repeat(copies, *([1] * (per_mask.dim() - 1))))
    handle = module.register_forward_hook(hook)
    inputs = images.repeat_interleave(a, dim=0).repeat(copies, 1, 1, 1)
    mask_areas = area_plan(torch.tensor(settings.optim.areas).repeat(b).tolist(), k, images.device)  # once: no sync per step
    mask_targets = targets.repeat_interleave(a)
    params = torch.ones(b * a, k, device=images.device, requires_grad=True)
    stepper = MaskStepper(params, settings)
    try:
        for _ in range(settings.optim.max_iter):
            hook.masks = _variant_masks(params, settings.optim.variant)
            gain = variant_reward(model_scores(model, inputs, settings), mask_targets, reward, settings.optim.variant)
            stepper.step(gain, area_loss(params, mask_areas, settings.optim.tie_tolerance))
        with torch.no_grad():
            hook.masks = _variant_masks(params, settings.optim.variant)
            rewards = variant_reward(model_scores(model, inputs, settings), mask_targets, reward, settings.optim.variant)
    finally:
        handle.remove()

    masks = params.detach()
    saliency = None
    if per_mask.dim() == 4:  # a spatial layer: the activation the mask removes, at image size
        removed = ((1 - masks)[:, :, None, None] * per_mask.abs()).sum(dim=1, keepdim=True)
        saliency = F.interpolate(removed, size=(h, w), mode="bilinear", align_corners=False).view(b, a, h, w)
    return {
        "channel_masks": masks.view(b, a, k),
        "saliency": saliency,
        "rewards": rewards.view(b, a),
        "phi0": reward(clean, targets),
        "history": stepper.history_tensor(b, a),
    }


def _variant_masks(params: torch.Tensor, variant: str) -> torch.Tensor:
    if variant == "preserve":
        return params
    if variant == "delete":
        return 1 - params
    return torch.cat((params, 1 - params))
