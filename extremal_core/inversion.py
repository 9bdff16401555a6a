"""Feature inversion (Mahendran & Vedaldi 2015; docs/channels.md): the image whose activations at
a layer match given ones, and the supplement's pair for channel attribution (figures 16-18): the
inversion of an image's activations and of those activations perturbed by a channel mask.

Minimises, per image, ‖Φ(x) − Φ_0‖² / ‖Φ_0‖² + λ_α‖x‖_α^α + λ_TV·Σ((Δ_h x)² + (Δ_v x)²)^{β/2}
with SGD (momentum, the learning rate decayed in steps), from a small random start. A batch of
images is one optimisation: the loss is a sum of per-image terms, so each image's gradient is its
own. The model's parameters get no gradients (``torch.autograd.grad`` on the image only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .channels import find_layer


@dataclass(frozen=True)
class InversionSettings:
    """The defaults of docs/channels.md (Fong's PyTorch port): α = 6, β = 2, λ_α = λ_TV = 1e-5, 200
    iterations of SGD, lr 100, momentum 0.9, lr × 0.1 every 100 iterations, init 1e-3·randn
    (``seed``: the same start on every machine, and for both images of a pair)."""

    alpha: float = 6.0
    beta: float = 2.0
    lambda_alpha: float = 1e-5
    lambda_tv: float = 1e-5
    max_iter: int = 200
    learning_rate: float = 100.0
    momentum: float = 0.9
    decay_every: int = 100
    decay: float = 0.1
    init_scale: float = 1e-3
    seed: int = 0


class _Stop(Exception):
    """Raised by the capture hook: nothing after the layer needs computing."""


def layer_activations(model: torch.nn.Module, module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module``'s output for ``images`` ``[B, C, H, W]`` (the forward pass stops there), with
    the graph to ``images`` when they require grad: ``[B, K, ...]``."""
    captured: list[torch.Tensor] = []

    def grab(m, i, o):
        captured.append(o)
        raise _Stop

    handle = module.register_forward_hook(grab)
    try:
        model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the layer was not reached by the forward pass")
    return captured[0]


def _regulariser(x: torch.Tensor, s: InversionSettings) -> torch.Tensor:
    """λ_α‖x‖_α^α + λ_TV·Σ((Δ_h x)² + (Δ_v x)²)^{β/2} per image: ``[B]``."""
    norm = x.abs().pow(s.alpha).flatten(1).sum(1)
    dh = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dv = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    tv = (dh * dh + dv * dv).pow(s.beta / 2).flatten(1).sum(1)
    return s.lambda_alpha * norm + s.lambda_tv * tv


def invert_activations(
    model: torch.nn.Module,
    layer: str | torch.nn.Module,
    target: torch.Tensor,
    image_shape: tuple[int, int, int],
    settings: InversionSettings | None = None,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Images ``[B, *image_shape]`` (in the model's input space) whose activations at ``layer``
    approach ``target`` ``[B, K, ...]``. ``model`` is used as it is (put it in eval mode).
    ``bounds``: (low, high), broadcastable to the images (e.g. ``[1, C, 1, 1]``: the input values
    of black and white pixels): every step is projected into them, which keeps the 6-norm's steep
    gradient from throwing a large step out of the image range (where SGD at lr 100 diverges)."""
    s = settings or InversionSettings()
    module = find_layer(model, layer) if isinstance(layer, str) else layer
    target = target.detach().float()
    scale = target.flatten(1).pow(2).sum(1).clamp_min(1e-12)  # ‖Φ_0‖² per image
    # One seeded start for every image: the original and the perturbed inversion of a pair start
    # from the same image, so their difference comes from the activations only.
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    init = torch.randn((1, *image_shape), generator=gen) * s.init_scale
    x = init.expand(target.shape[0], *image_shape).clone().to(target.device).requires_grad_(True)
    velocity = torch.zeros_like(x)
    lr = s.learning_rate
    for it in range(s.max_iter):
        if it and s.decay_every and it % s.decay_every == 0:
            lr *= s.decay
        acts = layer_activations(model, module, x).float()
        match = (acts - target).flatten(1).pow(2).sum(1) / scale
        loss = (match + _regulariser(x, s)).sum()
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            velocity.mul_(s.momentum).add_(grad)  # torch.optim.SGD's momentum, no dampening
            x.sub_(lr * velocity)
            if bounds is not None:
                x.copy_(torch.maximum(torch.minimum(x, bounds[1].to(x)), bounds[0].to(x)))
    return x.detach()


def channel_inversions(
    model: torch.nn.Module,
    layer: str | torch.nn.Module,
    images: torch.Tensor,
    channel_masks: torch.Tensor,
    settings: InversionSettings | None = None,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inversions of ``images``' activations at ``layer`` and of the activations perturbed by
    ``channel_masks`` ``[B, K]`` (m ⊙ Φ_1(x), the preserve perturbation), from the same start:
    ``(original, perturbed)``, each ``[B, C, H, W]`` in the model's input space. ``bounds``: as
    for ``invert_activations``."""
    module = find_layer(model, layer) if isinstance(layer, str) else layer
    with torch.no_grad():
        acts = layer_activations(model, module, images).float()
    if channel_masks.shape != acts.shape[:2]:
        raise ValueError(f"channel_masks {list(channel_masks.shape)} do not match the layer's [B, K] = {list(acts.shape[:2])}")
    masked = acts * channel_masks.to(acts).view(*channel_masks.shape, *([1] * (acts.dim() - 2)))
    both = invert_activations(model, module, torch.cat([acts, masked]), tuple(images.shape[1:]), settings, bounds)
    b = images.shape[0]
    return both[:b], both[b:]
