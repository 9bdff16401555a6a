"""``memory_budget_mb`` (CUDA only): ``extremal_core.methods.extremal.masks_per_batch`` probes the peak memory
of one mask over one iteration and bounds the masks per network call by budget / peak. A smaller
budget must give a smaller bound, hence more micro-batches, and the same masks: an image's masks
do not depend on which other images share its batch.
"""

from __future__ import annotations

import copy

import pytest
import torch

from extremal_core import ExtremalSettings, extremal_perturbation
from extremal_core.methods import extremal as extremal_method
from extremal_core.network import engine_model
from tests.gpu.conftest import NUM_IMAGES, SETTINGS, worst
from tests.reproducibility import mask_correlations

pytestmark = pytest.mark.gpu

LARGE_MB = 4096.0  # far more than 8 images x 3 areas of a 64x64 CNN need: one micro-batch


def test_small_budget_gives_more_micro_batches_and_the_same_masks(demo_batch, monkeypatch) -> None:
    dev = torch.device("cuda")
    model = copy.deepcopy(demo_batch.model).to(dev)
    images, labels = demo_batch.images.to(dev), demo_batch.labels.to(dev)  # [N, 3, 64, 64], [N]
    settings = ExtremalSettings.from_flat(**SETTINGS)
    a = len(settings.optim.areas)

    # The bound the engine derives (masks per network call), on the private model copy it uses.
    net = engine_model(model, settings)
    # Warm-up probe: the first CUDA calls allocate cuDNN/cuBLAS workspaces that later calls reuse;
    # counted once in the peak, they would inflate the per-mask measure below.
    extremal_method.masks_per_batch(net, images, settings.with_overrides(memory_budget_mb=LARGE_MB))
    large_bound = extremal_method.masks_per_batch(net, images, settings.with_overrides(memory_budget_mb=LARGE_MB))
    assert large_bound >= NUM_IMAGES * a, f"{LARGE_MB:g} MB holds only {large_bound} masks"
    # A budget for about two images' masks, from the probe's own measure (MB per mask).
    per_mask_mb = LARGE_MB / large_bound
    small_mb = 2.5 * a * per_mask_mb
    small_bound = extremal_method.masks_per_batch(net, images, settings.with_overrides(memory_budget_mb=small_mb))
    assert a <= small_bound < NUM_IMAGES * a < large_bound, (small_mb, small_bound, large_bound)

    # Count the micro-batches of whole engine calls: images per explain_batch call.
    calls: list[int] = []
    explain = extremal_method.explain_batch

    def counting(net, batch, *args, **kwargs):
        calls.append(batch.shape[0])
        return explain(net, batch, *args, **kwargs)

    monkeypatch.setattr(extremal_method, "explain_batch", counting)
    large = extremal_perturbation(model, images, labels, **SETTINGS, memory_budget_mb=LARGE_MB)
    large_calls, calls[:] = list(calls), []
    small = extremal_perturbation(model, images, labels, **SETTINGS, memory_budget_mb=small_mb)
    small_calls = list(calls)

    assert large_calls == [NUM_IMAGES]
    assert len(small_calls) > 1 and sum(small_calls) == NUM_IMAGES, small_calls
    corr = mask_correlations(small.masks, large.masks)  # [N, A]
    assert corr.min() >= 0.999, f"lowest mask correlation across budgets: {worst(corr, largest=False)}"
