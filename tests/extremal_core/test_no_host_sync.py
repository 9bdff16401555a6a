"""The iteration reads nothing back from the device: the CPU proofs of what a GPU needs.

On CUDA a tensor read into a Python number (`aten::_local_scalar_dense`) or a size known only
after a kernel ran (`aten::nonzero`) stalls the queue; and a graph break under `torch.compile`
is such a read. Both are checked here on the PyTorch-ops path, the code GPUs run.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from extremal_core.area import area_plan
from extremal_core.masks import SmoothMaskGenerator
from extremal_core.network import engine_model
from extremal_core.optimize import IterationStep, MaskStepper, optimize_masks
from extremal_core.perturbation import build_pyramid
from extremal_core.rewards import get_reward
from extremal_core.settings import Execution, ExtremalSettings

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")
SETTINGS = ExtremalSettings.from_flat(areas=(0.05, 0.1, 0.2), step=4, sigma=10.0, native_cpu_kernels=False, compile="off")


def _sync_counts(model, images, targets, settings) -> Counter:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimize_masks(model, images, targets, get_reward("simple"), settings)
    return Counter(e.name for e in prof.events() if e.name in SYNC_OPS)


@pytest.mark.parametrize("variant", ["preserve", "dual"])
def test_the_iteration_makes_no_host_sync(tiny_cnn, variant) -> None:
    """Whole runs of 1 and 4 iterations (setup included) read no device value back: 0 per iteration."""
    settings = SETTINGS.with_overrides(variant=variant, reward="contrastive")
    model = engine_model(tiny_cnn, settings)
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    for iters in (1, 4):
        counts = _sync_counts(model, images, targets, settings.with_overrides(max_iter=iters))
        assert sum(counts.values()) == 0, f"{iters} iterations: {dict(counts)}"


def test_the_iteration_compiles_as_one_graph(tiny_cnn) -> None:
    """`fullgraph=True` fails on any graph break (each would be a host sync on CUDA). The
    aot_eager backend traces forward and backward as inductor would, without its C++ build
    (minutes on a CI core); `compile="on"` runs the same step through inductor. Both jitter
    phases (as column orders: one graph), and the compiled step gives the eager step's losses
    and updated parameters."""
    model = engine_model(tiny_cnn, SETTINGS)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 3]).repeat_interleave(3)
    gen = SmoothMaskGenerator(32, 32, 4, 10.0, 20.0, native=False, fused=True)
    plan = area_plan(torch.tensor(SETTINGS.optim.areas).repeat(2).tolist(), gen.geometry.num_entries)
    step = IterationStep(model, build_pyramid(images), targets, plan, get_reward("simple"), SETTINGS, gen)
    compiled = torch.compile(step, fullgraph=True, dynamic=False, backend="aot_eager")
    start = torch.rand(6, *gen.geometry.param_shape, generator=torch.Generator().manual_seed(1))
    columns = torch.arange(32)
    for flip, order in ((True, columns.flip(0)), (False, columns)):  # the compiled form: one graph, two orders
        results = []
        for fn, arg in ((step, flip), (compiled, order)):
            params = start.clone().requires_grad_(True)
            _, _, gain, area_term = fn(params, arg)
            MaskStepper(params, SETTINGS).step(gain, area_term)
            results.append((gain.detach(), area_term.detach(), params.detach()))
        for eager, graph in zip(*results):
            torch.testing.assert_close(graph, eager, atol=1e-5, rtol=1e-5)


def test_compile_setting() -> None:
    """auto = on for CUDA only (CPUs and CI keep the eager code and its C loops); YAML's bare
    on / off arrive as booleans."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not ExtremalSettings().execution.compiles(cpu) and ExtremalSettings().execution.compiles(cuda)
    on, off = ExtremalSettings.from_flat(compile="on").execution, ExtremalSettings.from_flat(compile="off").execution
    assert on.compiles(cpu) and not off.compiles(cuda)
    assert Execution(compile=False).compile == "off" and Execution(compile=True).compile == "on"
    with pytest.raises(ValueError, match="compile must be one of"):
        ExtremalSettings.from_flat(compile="sometimes")
