"""The optimization loop: B images x A areas (x2 for dual) as one batch of masks.

Every image and area owns its own parameters and its own term of the energy, so the gradient
that reaches a mask does not depend on what else shares the batch: batching changes the speed,
not the answer.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .area import AreaPlan, area_loss, area_plan, mask_area
from .masks import SmoothMaskGenerator
from .perturbation import build_pyramid, perturb
from .rewards import Reward, class_scores
from .settings import ExtremalSettings, geometric_weights


@dataclass
class MaskBatch:
    """The outcome for one micro-batch of B images and A areas."""

    masks: torch.Tensor  # [B, A, H, W] in [0, 1]
    achieved_areas: torch.Tensor  # [B, A]: mean of each mask with its margin, what R_a constrains
    history: torch.Tensor | None  # [B, A, 2, T]: reward and area penalty per iteration
    iterations: torch.Tensor | None = None  # [B, A] (CPU): the iterations each mask went through the network


# On a CPU a network call on a few small images keeps its activations in cache: at 64² (48 KiB
# per image) 24 masks in calls of 8 ran 20 % faster than in one call. At 224² one image is
# already past this budget, and calls of 1-4 images were no faster than one call.
_CPU_CALL_BYTES = 1 << 19


def model_scores(model: torch.nn.Module, x: torch.Tensor, settings: ExtremalSettings) -> torch.Tensor:
    """Class scores `[N, C]` (float32) with the settings' autocast and memory format."""
    if settings.execution.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cast = (
        torch.autocast(device_type=x.device.type, dtype=getattr(torch, settings.execution.autocast))
        if settings.execution.autocast
        else nullcontext()
    )
    with cast:
        return torch.cat([class_scores(model(part)) for part in x.chunk(_cpu_calls(x))])


def _cpu_calls(x: torch.Tensor) -> int:
    """How many network calls `x` `[N, C, H, W]` is split into: several only for small CPU images."""
    per_call = _CPU_CALL_BYTES // max(1, x[0].numel() * x.element_size())
    if x.device.type != "cpu" or per_call < 4 or per_call >= len(x):
        return 1
    return math.ceil(len(x) / per_call)


def variant_inputs(pyramid: torch.Tensor, masks: torch.Tensor, variant: str, native: bool = True) -> torch.Tensor:
    """Perturbed images for a variant: masks `[B, A, H, W]` -> `[B·A, C, H, W]` (x2 for dual)."""
    c, h, w = pyramid.shape[2:]
    if variant == "preserve":
        return perturb(pyramid, masks, native).reshape(-1, c, h, w)
    if variant == "delete":
        return perturb(pyramid, 1 - masks, native).reshape(-1, c, h, w)
    return torch.cat(
        (perturb(pyramid, masks, native).reshape(-1, c, h, w), perturb(pyramid, 1 - masks, native).reshape(-1, c, h, w))
    )


def variant_reward(scores: torch.Tensor, targets: torch.Tensor, reward: Reward, variant: str) -> torch.Tensor:
    """The variant's reward per mask `[K]` from scores of `variant_inputs` (targets `[K]`)."""
    if variant == "preserve":
        return reward(scores, targets)
    if variant == "delete":
        return -reward(scores, targets)
    k = targets.shape[0]
    return reward(scores[:k], targets) - reward(scores[k:], targets)


class MaskStepper:
    """The optimizer of docs/algorithm.md for mask parameters in [0, 1]: SGD with momentum and dampening on
    `penalty_weight·R - reward`, clamping after each step, λ at step t from `weights` (default: the
    settings' schedule, `Optimisation.lambda_weights`)."""

    def __init__(self, params: torch.Tensor, settings: ExtremalSettings, weights: list[float] | None = None):
        self.params = params
        self.settings = settings
        self.optimizer = torch.optim.SGD(
            [params], lr=settings.optim.learning_rate, momentum=settings.optim.momentum, dampening=settings.optim.dampening
        )
        self.weights = settings.optim.lambda_weights() if weights is None else weights
        self.steps = 0
        self.history: list[torch.Tensor] = []

    def step(self, gain: torch.Tensor, area_term: torch.Tensor) -> None:
        """One update from the per-mask reward and area penalty `[K]`."""
        penalty = self.weights[self.steps] * area_term
        self.optimizer.zero_grad(set_to_none=True)
        (penalty - gain).sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            self.params.clamp_(0.0, 1.0)
        if self.settings.optim.keep_history:
            self.history.append(torch.stack((gain.detach(), -penalty.detach()), dim=1))
        self.steps += 1

    def history_tensor(self, b: int, a: int) -> torch.Tensor | None:
        """`[B, A, 2, T]` (reward, area penalty) on the CPU, or None when not kept."""
        return torch.stack(self.history, dim=-1).view(b, a, 2, -1).cpu() if self.history else None


def optimize_masks(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    reward: Reward,
    settings: ExtremalSettings,
    pyramid: torch.Tensor | None = None,
) -> MaskBatch:
    """Find the extremal masks of `images` `[B, C, H, W]` for `targets` `[B]` at every area.

    The model must already be in eval mode with its parameters frozen (the public API does it).
    `pyramid` `[B, L, C, H, W]`: the images' perturbation pyramid, when the caller has it.
    """
    b, _, h, w = images.shape
    areas = settings.optim.areas
    a = len(areas)
    # A compiled iteration keeps to PyTorch ops (the C loops are opaque to the compiler); the
    # stop rule's batches shrink as masks freeze, so it keeps the eager generator.
    fused = settings.execution.compiles(images.device) and settings.optim.stop_tolerance is None
    if fused:
        settings = settings.with_overrides(native_cpu_kernels=False)
    m = settings.masks
    generator = SmoothMaskGenerator(h, w, m.step, m.sigma, m.smooth_max_coldness, settings.execution.native_cpu_kernels, fused)
    if pyramid is None:
        pyramid = build_pyramid(images, settings.masks.num_levels, settings.masks.max_blur, settings.masks.perturbation)
    mask_areas = torch.tensor(areas).repeat(b)  # [B·A], image-major, float32 as the area constraint reads them
    mask_targets = targets.repeat_interleave(a)

    if settings.optim.stop_tolerance is not None:
        return _optimize_with_stop(
            model, pyramid, mask_targets, mask_areas.to(images.device), reward, settings, generator, b, a
        )
    if settings.optim.warm_start is not None and a > 1:
        return _optimize_warm(model, pyramid, targets, reward, settings, generator)
    params = torch.ones(b * a, *generator.geometry.param_shape, device=images.device, requires_grad=True)
    plan = area_plan(mask_areas.tolist(), generator.geometry.num_entries, images.device)
    weights = settings.optim.lambda_weights()
    masks, full, stepper = _descend(model, pyramid, params, mask_targets, plan, reward, settings, generator, weights)
    return MaskBatch(
        masks=masks.detach().view(b, a, h, w),
        achieved_areas=mask_area(full.detach()).view(b, a),
        history=stepper.history_tensor(b, a),
        iterations=torch.full((b, a), len(weights), dtype=torch.long),
    )


def _descend(
    model: torch.nn.Module,
    pyramid: torch.Tensor,
    params: torch.Tensor,
    mask_targets: torch.Tensor,
    plan: AreaPlan,
    reward: Reward,
    settings: ExtremalSettings,
    generator: SmoothMaskGenerator,
    weights: list[float],
) -> tuple[torch.Tensor, torch.Tensor, MaskStepper]:
    """One SGD step on `params` `[K, ...]` (K = B·G masks, image-major: G per image of `pyramid`
    `[B, L, C, H, W]`) per λ of `weights` `[T]`; returns the last iteration's masks `[K, H, W]`,
    full-resolution masks and the stepper. Nothing in the loop reads a value back from the
    device (no host sync)."""
    stepper = MaskStepper(params, settings, weights)
    step = IterationStep(model, pyramid, mask_targets, plan, reward, settings, generator)
    if generator.fused:
        step = compiled_step(step)
    for t in range(len(weights)):
        masks, full, gain, area_term = step(params, settings.optim.jitter and t % 2 == 0)
        stepper.step(gain, area_term)
    return masks, full, stepper


class IterationStep:
    """The forward half of one iteration, from parameters `[K, Hp, Wp]` to masks `[K, H, W]`,
    full masks `[K, Hf, Wf]`, reward `[K]` and area penalty `[K]` (`flip`: the jitter's mirror
    image). Everything but the parameters is fixed for a batch, so one call shape per chunk."""

    def __init__(self, model, pyramid, mask_targets, plan, reward, settings, generator):
        self.model, self.pyramid, self.mask_targets, self.plan = model, pyramid, mask_targets, plan
        self.reward, self.settings, self.generator = reward, settings, generator
        # The generator's per-device tables exist before the first call, so a compiled graph
        # finds them as constants (filling them inside would change its guards: a recompile).
        generator.table(pyramid)
        if generator.fused:
            generator.indices(pyramid)

    def __call__(self, params: torch.Tensor, flip: bool | torch.Tensor):
        """`flip`: whether to mirror the inputs, or the column order `[W]` to read them in (the
        compiled step's form: both jitter phases are then one graph)."""
        b, (h, w) = self.pyramid.shape[0], self.pyramid.shape[-2:]
        settings = self.settings
        masks, full = self.generator.generate(params)
        x = variant_inputs(self.pyramid, masks.view(b, -1, h, w), settings.optim.variant, settings.execution.native_cpu_kernels)
        if isinstance(flip, torch.Tensor):
            x = x.index_select(3, flip)
        elif flip:
            x = torch.flip(x, dims=(3,))
        gain = variant_reward(model_scores(self.model, x, settings), self.mask_targets, self.reward, settings.optim.variant)
        return masks, full, gain, area_loss(full, self.plan, settings.optim.tie_tolerance)


def compiled_step(step: IterationStep):
    """`step` through `torch.compile` (whole graph, static shapes: one graph per micro-batch shape,
    the jitter's mirror image as a column order so both phases share it); the first call that
    fails to compile warns in one line and the eager step takes over."""
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    w = step.pyramid.shape[-1]
    columns = torch.arange(w, device=step.pyramid.device)
    orders = {False: columns, True: columns.flip(0)}

    def call(params: torch.Tensor, flip: bool):
        nonlocal compiled
        try:
            return compiled(params, orders[bool(flip)])
        except Exception as exc:  # any compiler failure: the eager step computes the same
            if compiled is step:
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"torch.compile failed, the iteration runs eagerly: {type(exc).__name__}: {first}", stacklevel=2)
            compiled = step
            return step(params, orders[bool(flip)])

    return call


def _optimize_warm(
    model: torch.nn.Module,
    pyramid: torch.Tensor,
    targets: torch.Tensor,
    reward: Reward,
    settings: ExtremalSettings,
    generator: SmoothMaskGenerator,
) -> MaskBatch:
    """`optimize_masks` with `settings.optim.warm_start`: one area at a time (`"up"`: smallest first),
    the first over the whole schedule, each next one from the previous one's final parameters for
    `warm_iter` iterations: the schedule's last ones (`warm_lambda="tail"`, λ from
    `lambda0·lambda_growth^(max_iter - warm_iter)`) or its whole λ range compressed (`"range"`).
    One mask per image per pass: B·(max_iter + (A - 1)·warm_iter) passes instead of B·A·max_iter."""
    b, (h, w) = pyramid.shape[0], pyramid.shape[-2:]
    areas, total, growth = settings.optim.areas, settings.optim.max_iter, settings.optim.lambda_growth
    order = sorted(range(len(areas)), key=lambda j: areas[j], reverse=settings.optim.warm_start == "down")
    warm = min(settings.optim.warm_iter, total)
    masks = torch.zeros(b, len(areas), h, w, device=pyramid.device)
    achieved = torch.zeros(b, len(areas), device=pyramid.device)
    iterations = torch.zeros(b, len(areas), dtype=torch.long)
    params = torch.ones(b, *generator.geometry.param_shape, device=pyramid.device)
    for n, j in enumerate(order):
        if n == 0:
            weights = settings.optim.lambda_weights()
        elif settings.optim.warm_lambda == "tail":
            weights = geometric_weights(settings.optim.lambda0 * growth ** (total - warm), growth, warm)
        else:
            weights = geometric_weights(settings.optim.lambda0, growth ** (total / warm), warm)
        params = params.detach().clone().requires_grad_(True)
        plan = area_plan(torch.tensor(areas[j]).repeat(b).tolist(), generator.geometry.num_entries, pyramid.device)
        last, full, _ = _descend(model, pyramid, params, targets, plan, reward, settings, generator, weights)
        masks[:, j] = last.detach().view(b, h, w)
        achieved[:, j] = mask_area(full.detach())
        iterations[:, j] = len(weights)
    return MaskBatch(masks=masks, achieved_areas=achieved, history=None, iterations=iterations)


def _optimize_with_stop(
    model: torch.nn.Module,
    pyramid: torch.Tensor,
    mask_targets: torch.Tensor,
    mask_areas: torch.Tensor,
    reward: Reward,
    settings: ExtremalSettings,
    generator: SmoothMaskGenerator,
    b: int,
    a: int,
) -> MaskBatch:
    """`optimize_masks` with a per-mask convergence stop (`settings.optim.stop_tolerance`).

    The same iteration and the same SGD step (momentum with dampening, written out here so that
    a subset of the masks can be stepped: with nothing frozen it gives the fixed schedule's
    masks), on the masks still active. At every multiple of `stop_window` iterations a mask whose
    parameters moved less than `stop_tolerance` (largest absolute change since the last check)
    leaves the network batch. With `stop_finish="freeze"` it keeps the mask of its last
    iteration; with `"area"` it goes on to `max_iter` with the area term alone (λ still growing,
    no network pass: mask generation and a sort per iteration), which sharpens it to its area as
    the fixed schedule's last iterations do. The test is per mask and on a fixed grid of
    iterations, so a mask's outcome does not depend on what else shares the batch.
    """
    h, w = pyramid.shape[-2:]
    k = b * a
    lr, momentum, dampening = settings.optim.learning_rate, settings.optim.momentum, settings.optim.dampening
    params = torch.ones(k, *generator.geometry.param_shape, device=pyramid.device)
    velocity = torch.zeros_like(params)
    anchor = params.clone()
    mask_pyramid = pyramid.repeat_interleave(a, dim=0)  # [K, L, C, H, W]: each mask's image
    final_masks = torch.zeros(k, h, w, device=pyramid.device)
    final_area = torch.zeros(k, device=pyramid.device)
    iterations = torch.zeros(k, dtype=torch.long)
    stepped = torch.arange(k, device=pyramid.device)  # masks that still take steps
    in_network = torch.ones(k, dtype=torch.bool, device=pyramid.device)  # ... of which with the reward
    weights = settings.optim.lambda_weights()
    for t in range(settings.optim.max_iter):
        p = params[stepped].requires_grad_(True)
        masks, full = generator.generate(p)
        net = in_network[stepped]
        ids = stepped[net]
        gain = torch.zeros(len(stepped), device=pyramid.device)
        if len(ids):
            x = variant_inputs(mask_pyramid[ids], masks[net].view(-1, 1, h, w), settings.optim.variant,
                               settings.execution.native_cpu_kernels)
            if settings.optim.jitter and t % 2 == 0:
                x = torch.flip(x, dims=(3,))
            net_gain = variant_reward(model_scores(model, x, settings), mask_targets[ids], reward, settings.optim.variant)
            gain = net_gain if len(ids) == len(stepped) else gain.index_put((net.nonzero()[:, 0],), net_gain)
        penalty = weights[t] * area_loss(full, mask_areas[stepped], settings.optim.tie_tolerance)
        (penalty - gain).sum().backward()
        with torch.no_grad():
            grad = p.grad
            if t == 0:  # torch.optim.SGD's first step: the velocity is the gradient, undampened
                v = grad.clone()
            else:
                v = velocity[stepped].mul_(momentum).add_(grad, alpha=1 - dampening)
            velocity[stepped] = v
            params[stepped] = p.detach().add_(v, alpha=-lr).clamp_(0.0, 1.0)
            final_masks[stepped] = masks.detach().view(-1, h, w)
            final_area[stepped] = mask_area(full.detach())
            iterations[ids.cpu()] += 1
            if (t + 1) % settings.optim.stop_window == 0 and t + 1 < settings.optim.max_iter and len(ids):
                moved = (params[ids] - anchor[ids]).flatten(1).abs().amax(dim=1)
                anchor[ids] = params[ids]
                in_network[ids[moved < settings.optim.stop_tolerance]] = False
                if settings.optim.stop_finish == "freeze":
                    stepped = stepped[in_network[stepped]]
                if len(stepped) == 0:
                    break
    return MaskBatch(
        masks=final_masks.view(b, a, h, w),
        achieved_areas=final_area.view(b, a),
        history=None,
        iterations=iterations.view(b, a),
    )
