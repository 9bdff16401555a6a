"""The engine on CUDA against the same call on the CPU in fp32 (tests/gpu/conftest.py: eight demo
images, 64x64, 50 iterations, step 4, sigma 10, areas 0.05 / 0.1 / 0.2).

GPUs run the PyTorch ops of the smooth max and the pyramid blend, CPUs their compiled C loops:
the two agree to float rounding, which 50 iterations of the optimizer may amplify a little.
"""

from __future__ import annotations

import copy

import pytest
import torch

from extremal_core import extremal_perturbation
from tests.gpu.conftest import SETTINGS, reward_errors, worst
from tests.reproducibility import mask_correlations

pytestmark = pytest.mark.gpu


def run_on_cuda(demo_batch, **extra):
    """The engine on ``cuda:0`` with the comparison SETTINGS plus ``extra``; masks [N, A, 64, 64]."""
    dev = torch.device("cuda")
    model = copy.deepcopy(demo_batch.model).to(dev)
    result = extremal_perturbation(model, demo_batch.images.to(dev), demo_batch.labels.to(dev), **SETTINGS, **extra)
    assert result.masks.device.type == "cuda"
    return result


# (TF32, minimum mask correlation, maximum relative reward difference). With TF32 off the GPU
# computes in IEEE fp32 like the CPU; cuDNN's default (TF32 convolutions, 10-bit mantissa) is
# coarser than fp32 but finer than bf16, so it gets the bf16 bars.
FP32_CASES = [
    pytest.param(False, 0.99, 0.01, id="fp32-ieee"),
    pytest.param(True, 0.95, 0.05, id="fp32-tf32-convolutions"),
]


@pytest.mark.parametrize(("tf32", "min_corr", "max_rel"), FP32_CASES, indirect=["tf32"])
def test_cuda_fp32_matches_cpu(demo_batch, cpu_reference, tf32, min_corr, max_rel) -> None:
    result = run_on_cuda(demo_batch)
    corr = mask_correlations(result.masks, cpu_reference.masks)  # [N, A]
    rel = reward_errors(result, cpu_reference)  # [N, A]
    assert corr.min() >= min_corr, f"lowest mask correlation with the CPU: {worst(corr, largest=False)}"
    assert rel.max() <= max_rel, f"largest relative reward difference from the CPU: {worst(rel, largest=True)}"


@pytest.mark.parametrize("tf32", [pytest.param(True, id="tf32-default")], indirect=True)  # bf16 convs ignore it
def test_cuda_bfloat16_channels_last_close_to_cpu_fp32(demo_batch, cpu_reference, tf32) -> None:
    """bf16 keeps ~3 significant digits (8-bit mantissa): looser bars than fp32."""
    result = run_on_cuda(demo_batch, autocast="bfloat16", channels_last=True)
    corr = mask_correlations(result.masks, cpu_reference.masks)
    rel = reward_errors(result, cpu_reference)
    assert corr.min() >= 0.95, f"lowest mask correlation with the CPU fp32 run: {worst(corr, largest=False)}"
    assert rel.max() <= 0.05, f"largest relative reward difference from the CPU fp32 run: {worst(rel, largest=True)}"
