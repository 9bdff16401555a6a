"""The per-mask convergence stop (`stop_tolerance`): off by default, the fixed schedule's masks
when nothing stops, per-mask (batch-invariant) when masks do stop, fewer network passes."""

import pytest
import torch

from extremal_core import ExtremalSettings, extremal_perturbation

KW = dict(areas=[0.05, 0.1, 0.2], step=4, sigma=10.0)


def images(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_off_by_default():
    assert ExtremalSettings().optim.stop_tolerance is None


def test_nothing_stopped_gives_the_fixed_schedule(tiny_cnn, native_kernels):
    """stop_tolerance=0 never freezes a mask: the written-out SGD step equals torch.optim.SGD's."""
    x, t = images(3), [0, 1, 2]
    kw = dict(KW, max_iter=30, native_cpu_kernels=native_kernels)
    fixed = extremal_perturbation(tiny_cnn, x, t, **kw)
    stop = extremal_perturbation(tiny_cnn, x, t, stop_tolerance=0.0, stop_window=5, **kw)
    assert (fixed.iterations == 30).all() and (stop.iterations == 30).all()
    assert (fixed.masks - stop.masks).abs().max() <= 1e-6
    assert (fixed.achieved_areas - stop.achieved_areas).abs().max() <= 1e-6
    assert torch.allclose(fixed.scores, stop.scores, atol=1e-5)


@pytest.mark.parametrize("finish", ["freeze", "area"])
def test_stopping_is_per_mask_and_batch_invariant(tiny_cnn, finish):
    x, t = images(6, 32), torch.arange(6) % 5
    kw = dict(KW, max_iter=120, stop_tolerance=0.02, stop_window=10, stop_finish=finish)
    batch = extremal_perturbation(tiny_cnn, x, t, **kw)
    assert batch.iterations.min() < 120, batch.iterations  # some masks stopped early
    assert ((batch.iterations % 10 == 0) | (batch.iterations == 120)).all()
    for i in (0, 4):
        alone = extremal_perturbation(tiny_cnn, x[i : i + 1], t[i : i + 1], **kw)
        assert torch.equal(alone.iterations[0], batch.iterations[i])
        assert (batch.masks[i] - alone.masks[0]).abs().max() <= 1e-4
    again = extremal_perturbation(tiny_cnn, x, t, **kw)
    assert torch.equal(again.masks, batch.masks) and torch.equal(again.iterations, batch.iterations)


@pytest.mark.parametrize("bad", [
    dict(stop_tolerance=-1.0), dict(stop_window=0), dict(stop_tolerance=0.01, keep_history=True),
    dict(stop_tolerance=0.01, stop_finish="never"),
])
def test_bad_stop_settings(bad):
    with pytest.raises(ValueError):
        ExtremalSettings.from_flat(**bad)
