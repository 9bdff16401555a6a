"""The compiled CPU loops (extremal_core/cpu_kernels.py) against the eager code, and their build."""

import platform

import pytest
import torch

from extremal_core import cpu_kernels
from extremal_core.masks import SmoothMaskGenerator
from extremal_core.perturbation import build_pyramid, perturb


def _generate(gen: SmoothMaskGenerator, params: torch.Tensor, weights: torch.Tensor):
    p = params.clone().requires_grad_(True)
    crop, full = gen.generate(p)
    (full * weights).sum().backward()
    return crop.detach(), full.detach(), p.grad


@pytest.mark.parametrize(
    "size,step,sigma,masks,threads",
    [((64, 64), 4, 10.0, 24, 1), ((224, 224), 7, 21.0, 3, 1), ((40, 57), 5, 8.0, 5, 2), ((30, 30), 3, 2.5, 7, 3)],
)
def test_compiled_matches_eager(size, step, sigma, masks, threads, compiled_kernel):
    torch.manual_seed(0)
    eager = SmoothMaskGenerator(*size, step=step, sigma=sigma, native=False)
    compiled = SmoothMaskGenerator(*size, step=step, sigma=sigma, native=True)
    # Many parameters exactly 0, as the optimizer's clamp leaves them. Not exactly 1: where the
    # smooth max of ones rounds to 1 + ulp in one code and 1 - ulp in the other, the output
    # clamp passes the gradient in one and not the other.
    params = torch.rand(masks, *eager.geometry.param_shape).mul(1.2).sub(0.2).clamp(0, 0.999)
    weights = torch.randn(masks, *eager.geometry.full_shape)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref = _generate(eager, params, weights)
        got = _generate(compiled, params, weights)
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(got[0], ref[0], atol=2e-6)
    assert torch.allclose(got[1], ref[1], atol=2e-6)
    assert torch.allclose(got[2], ref[2], atol=2e-5 * ref[2].abs().max())


def test_other_dtypes_and_devices_use_the_eager_code():
    gen = SmoothMaskGenerator(20, 20, step=4, sigma=6.0)
    params = torch.rand(2, *gen.geometry.param_shape, dtype=torch.float64)
    assert not cpu_kernels.supports(params)
    crop, full = gen.generate(params)
    assert full.dtype == torch.float64


def test_build_is_cached_per_source_and_flags(tmp_path, compiled_kernel):
    first = cpu_kernels.compile_library(directory=tmp_path)
    assert first is not None and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels.compile_library(directory=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left behind


def test_missing_compiler_means_no_library(tmp_path, caplog):
    with caplog.at_level("INFO", logger="extremal_core.cpu_kernels"):
        assert cpu_kernels.compile_library(compiler="no-such-compiler-xyz", directory=tmp_path) is None
    assert "no C compiler" in caplog.text
    assert not any(tmp_path.iterdir())


def test_failed_build_means_no_library(tmp_path, caplog):
    # `false` is a "compiler" that always fails: the build error is logged, nothing is cached.
    with caplog.at_level("INFO", logger="extremal_core.cpu_kernels"):
        assert cpu_kernels.compile_library(compiler="false", directory=tmp_path) is None
    assert "failed" in caplog.text
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind,threads", [("blur", 1), ("fade", 2)])
def test_compiled_blend_matches_eager(kind, threads, compiled_kernel):
    torch.manual_seed(0)
    pyramid = build_pyramid(torch.rand(3, 3, 20, 28), num_levels=8, max_blur=5.0, kind=kind)
    masks = torch.rand(3, 4, 20, 28)
    masks[0, 0] = 1.0  # the top level: the last segment's slope, as just below it
    masks[1, 1] = 0.0
    masks[2, 2, :, :5] = 3 / 7  # exactly on a level
    weights = torch.randn(3, 4, 3, 20, 28)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for native in (False, True):
            m = masks.clone().requires_grad_(True)
            out = perturb(pyramid, m, native=native)
            (out * weights).sum().backward()
            results.append((out.detach(), m.grad))
    finally:
        torch.set_num_threads(before)
    (ref_out, ref_grad), (out, grad) = results
    assert torch.allclose(out, ref_out, atol=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-5)
    top_slope = 7 * (weights[0, 0] * (pyramid[0, 7] - pyramid[0, 6])).sum(dim=0)
    assert torch.allclose(grad[0, 0], top_slope, atol=1e-5)
    assert top_slope.abs().min() > 0


def test_blend_with_a_differentiable_pyramid_uses_the_eager_code():
    pyramid = build_pyramid(torch.rand(1, 3, 8, 8), num_levels=4, kind="fade").requires_grad_(True)
    out = perturb(pyramid, torch.rand(1, 2, 8, 8))
    out.sum().backward()
    assert pyramid.grad is not None and pyramid.grad.abs().sum() > 0


def test_a_portable_build_gives_the_same_masks(monkeypatch, compiled_kernel):
    """`EXTREMAL_CORE_MARCH` picks the build target; a build for any x86-64 CPU (or for the compiler's
    default) loads beside the native one and computes the same smooth max to float rounding."""
    gen = SmoothMaskGenerator(64, 64, step=4, sigma=10.0)
    params = torch.rand(4, *gen.geometry.param_shape, generator=torch.Generator().manual_seed(0))
    native = gen.generate(params)[1]
    targets = ("x86-64-v2", "none") if platform.machine() == "x86_64" else ("none",)
    other = next((t for t in targets if t != cpu_kernels.march()), "native")
    monkeypatch.setenv(cpu_kernels.MARCH_VARIABLE, other)
    assert cpu_kernels.library() is not None and cpu_kernels.library() is not compiled_kernel
    assert torch.allclose(gen.generate(params)[1], native, atol=2e-6)


def test_the_switch_turns_the_compiled_loops_off(monkeypatch):
    monkeypatch.setenv(cpu_kernels.SWITCH_VARIABLE, "0")
    assert cpu_kernels.library() is None
    assert not cpu_kernels.supports(torch.zeros(2, 2))
