"""The engine's GPU speed path on CUDA: a loop without host syncs at 224² (several smooth-max
chunks per iteration), the fused mask generator compiled by Triton against the reference ops,
the compiled iteration against the eager one, and bf16 against fp32 at the full 800 iterations.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from extremal_core import extremal_perturbation
from extremal_core.area import area_plan
from extremal_core.masks import SmoothMaskGenerator
from extremal_core.network import engine_model
from extremal_core.optimize import IterationStep, MaskStepper, compiled_step
from extremal_core.perturbation import build_pyramid
from extremal_core.rewards import get_reward
from extremal_core.settings import ExtremalSettings
from tests.gpu.conftest import SETTINGS
from tests.reproducibility import mask_correlations

pytestmark = pytest.mark.gpu

AREAS = (0.05, 0.1, 0.2)


@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_the_loop_never_syncs_at_224(compile_mode) -> None:
    """8 images x 3 areas at 224²: 24 masks, three chunks of the reference smooth max
    (`compile="off"`), or the fused compiled step. Setup and one warm-up iteration (tables made,
    graphs compiled) run first; the next iterations run under sync debug mode "error"."""
    dev = torch.device("cuda")
    settings = ExtremalSettings.from_flat(areas=AREAS, autocast="bfloat16", compile=compile_mode)
    torch.manual_seed(0)
    model = engine_model(torchvision.models.resnet18(num_classes=10).eval().to(dev), settings)
    images = torch.randn(8, 3, 224, 224, device=dev)
    fused = settings.execution.compiles(dev)
    gen = SmoothMaskGenerator(224, 224, 7, 21.0, 20.0, native=False, fused=fused)
    plan = area_plan(torch.tensor(AREAS).repeat(8).tolist(), gen.geometry.num_entries, dev)
    targets = torch.arange(8, device=dev).repeat_interleave(3)
    step = IterationStep(model, build_pyramid(images), targets, plan, get_reward("simple"), settings, gen)
    step = compiled_step(step) if fused else step
    params = torch.ones(24, *gen.geometry.param_shape, device=dev, requires_grad=True)
    stepper = MaskStepper(params, settings)
    for t in range(2):  # warm-up: both jitter phases
        stepper.step(*step(params, t % 2 == 0)[2:])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(4):
            stepper.step(*step(params, t % 2 == 0)[2:])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(params).all()


def test_fused_generator_compiled_matches_reference_at_224() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    reference = SmoothMaskGenerator(224, 224, 7, 21.0, native=False)
    fused = SmoothMaskGenerator(224, 224, 7, 21.0, native=False, fused=True)
    params = torch.rand(24, *reference.geometry.param_shape, device=dev)
    weights = torch.randn(24, 224, 224, device=dev)
    out = []
    for gen in (reference, fused):
        p = params.clone().requires_grad_(True)
        crop, full = gen.generate(p)
        (crop * weights).sum().backward()
        out.append((full.detach(), p.grad))
    assert (out[1][0] - out[0][0]).abs().max() <= 1e-5
    assert (out[1][1] - out[0][1]).abs().max() <= 1e-4 * out[0][1].abs().max()


def test_compiled_iteration_matches_eager(demo_batch) -> None:
    dev = torch.device("cuda")
    model = copy.deepcopy(demo_batch.model).to(dev)
    images, labels = demo_batch.images.to(dev), demo_batch.labels.to(dev)
    eager = extremal_perturbation(model, images, labels, **SETTINGS, compile="off")
    compiled = extremal_perturbation(model, images, labels, **SETTINGS, compile="on")
    corr = mask_correlations(compiled.masks, eager.masks)
    assert corr.min() >= 0.99, corr


def test_bfloat16_agrees_with_fp32_at_800_iterations(demo_batch) -> None:
    """The whole paper schedule: bf16 autocast (the GPU configs' default) against fp32 (TF32
    off). Median mask correlation per area >= 0.95, lowest >= 0.8."""
    dev = torch.device("cuda")
    model = copy.deepcopy(demo_batch.model).to(dev)
    images, labels = demo_batch.images.to(dev), demo_batch.labels.to(dev)
    kw = dict(SETTINGS, max_iter=800)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        fp32 = extremal_perturbation(model, images, labels, **kw, tf32=False)
        bf16 = extremal_perturbation(model, images, labels, **kw, autocast="bfloat16", channels_last=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    corr = mask_correlations(bf16.masks, fp32.masks)  # [N, A]
    assert (corr.median(dim=0).values >= 0.95).all(), corr
    assert corr.min() >= 0.8, corr
