"""GPU checks: the tests in this folder carry the ``gpu`` marker and are skipped, with the reason,
where torch sees no CUDA device. Run them with ``python -m pytest -q -m gpu tests/gpu``
(``benchmarks/gpu_check.sh`` does, on a machine lent a GPU).

Shared here: the engine settings of the CUDA-vs-CPU comparisons, eight held-out demo images with
the trained demo CNN, the CPU fp32 reference result, and the reward comparison (masks: tests/reproducibility.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from extremal_core import ExtremalResult, extremal_perturbation

NO_CUDA_REASON = "no CUDA device visible (torch.cuda.is_available() is False)"

# Short runs of the demo setting (64x64 images, 16x16 parameter grid): long enough for the masks
# to take shape, short enough that float rounding differences have little time to grow.
SETTINGS = {"areas": (0.05, 0.1, 0.2), "max_iter": 50, "step": 4, "sigma": 10.0}
NUM_IMAGES = 8


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``gpu``-marked test, once for all, when CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@dataclass(frozen=True)
class DemoBatch:
    """``model``: the trained demo CNN (eval, CPU); ``images`` float32 [N, 3, 64, 64] normalised
    (CPU); ``labels`` long [N]: the class each image shows (the targets)."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor


@pytest.fixture(scope="session")
def demo_batch(demo_model_and_data) -> DemoBatch:
    """The first ``NUM_IMAGES`` held-out demo images (the ``demo_images`` pattern of
    tests/extremal_core/conftest.py, which is not visible from this folder)."""
    from demo import to_model_input

    b = demo_model_and_data
    images = to_model_input(b.heldout_images[:NUM_IMAGES])
    return DemoBatch(b.model, images, torch.as_tensor(b.heldout_labels[:NUM_IMAGES]).long())


@pytest.fixture(scope="session")
def cpu_reference(demo_batch: DemoBatch) -> ExtremalResult:
    """The engine on the CPU in fp32 (its compiled C loops when a compiler is present): the
    reference every CUDA run is compared with. masks [N, A, 64, 64], rewards [N, A]."""
    return extremal_perturbation(demo_batch.model, demo_batch.images, demo_batch.labels, **SETTINGS)


@pytest.fixture
def tf32(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Indirect parameter: TF32 convolutions and matmuls on (True) or off (False) for one test;
    torch's previous flags come back after it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(request.param)
    try:
        yield bool(request.param)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def reward_errors(result: ExtremalResult, reference: ExtremalResult) -> torch.Tensor:
    """Relative reward difference per (image, area), float64 [N, A] (CPU).

    The reward (the target's logit) can sit near 0 while the masks are fine, so the difference
    is divided by the larger of |reference reward| and the reference's reward range
    phi0 - phi_min (clean image vs fully blurred image), the scale the reward moves on.
    """
    got = result.rewards.detach().double().cpu()
    ref = reference.rewards.detach().double().cpu()
    span = (reference.phi0 - reference.phi_min).detach().double().cpu().abs()[:, None]
    return (got - ref).abs() / torch.maximum(ref.abs(), span)


def worst(values: torch.Tensor, largest: bool) -> str:
    """'value at (image i, area a)' for the worst entry of an [N, A] tensor, for messages."""
    flat = values.flatten()
    k = int(flat.argmax() if largest else flat.argmin())
    i, a = divmod(k, values.shape[1])
    return f"{float(flat[k]):.4f} at image {i}, area {SETTINGS['areas'][a]}"
