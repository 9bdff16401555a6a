"""The comparison methods on CUDA against the same call on the CPU (eight demo images, 64x64).

RISE draws its masks from a CPU generator whatever the device, so the same seed gives the same
map on a GPU; the gradient family is one backward pass, equal to float rounding. Meaningful
perturbation optimises (here 30 Adam steps), so its deletion maps are compared by correlation.
"""

from __future__ import annotations

import copy

import pytest
import torch

from extremal_core import make_explainer
from tests.extremal_core.test_comparison_methods import correlation

pytestmark = pytest.mark.gpu

CASES = {
    "gradient": {},
    "guided_backprop": {},
    "grad_cam": {"layer": "features.11"},
    "rise": {"num_masks": 1000},
    "meaningful_perturbation": {"max_iter": 30, "mask_scale": 4, "mask_blur": 2.0, "null_blur": 5.0, "l1": 1e-3},
}


@pytest.mark.parametrize("tf32", [False], indirect=True)  # fp32 convolutions on both devices
@pytest.mark.parametrize("method", sorted(CASES))
def test_cuda_maps_equal_cpu_maps(demo_batch, method, tf32):
    cpu = make_explainer(method, demo_batch.model, **CASES[method]).explain(demo_batch.images, demo_batch.labels).maps
    model = copy.deepcopy(demo_batch.model).cuda()
    dev = torch.device("cuda")
    gpu = make_explainer(method, model, **CASES[method]).explain(demo_batch.images.to(dev), demo_batch.labels.to(dev)).maps
    assert gpu.device.type == "cuda"
    gpu = gpu.cpu()
    for i in range(len(cpu)):
        assert correlation(gpu[i], cpu[i]) >= (0.99 if method == "meaningful_perturbation" else 0.9999), (method, i)
    if method != "meaningful_perturbation":
        torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4 * float(cpu.abs().max()))
