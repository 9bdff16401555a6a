"""`warm_start`: the areas one after another, each next one from the previous one's parameters
(benchmarks/bench_schedule.py measures it against the paper schedule). Correctness only."""

import pytest
import torch

from extremal_core import ExtremalSettings, channel_perturbation, extremal_perturbation

KW = dict(step=4, sigma=10.0, max_iter=40, warm_iter=10)


def images(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_the_first_area_is_a_run_of_that_area_alone(tiny_cnn):
    # Well posed: the first area of the order starts from the all-ones start like any run.
    x, t = images(3), torch.tensor([0, 2, 4])
    up = extremal_perturbation(tiny_cnn, x, t, areas=[0.2, 0.05, 0.1], warm_start="up", **KW)
    alone = extremal_perturbation(tiny_cnn, x, t, areas=[0.05], **KW)
    assert torch.equal(up.masks[:, 1], alone.masks[:, 0])
    down = extremal_perturbation(tiny_cnn, x, t, areas=[0.2, 0.05, 0.1], warm_start="down", **KW)
    alone = extremal_perturbation(tiny_cnn, x, t, areas=[0.2], **KW)
    assert torch.equal(down.masks[:, 0], alone.masks[:, 0])
    # The later areas are not runs from the all-ones start (they start from the previous mask).
    cold = extremal_perturbation(tiny_cnn, x, t, areas=[0.1], max_iter=10, step=4, sigma=10.0,
                                 lambda0=300.0 * 1.0035**30)
    assert not torch.equal(up.masks[:, 2], cold.masks[:, 0])


def test_passes_per_image_and_area_order(tiny_cnn):
    for how in ("tail", "range"):
        r = extremal_perturbation(tiny_cnn, images(2), [1, 3], areas=[0.2, 0.05, 0.1], warm_start="up",
                                  warm_lambda=how, **KW)
        assert r.iterations.tolist() == [[10, 40, 10]] * 2  # 40 + 2 x 10 passes per image
        assert r.masks.shape == (2, 3, 32, 32)
    down = extremal_perturbation(tiny_cnn, images(2), [1, 3], areas=[0.2, 0.05, 0.1], warm_start="down", **KW)
    assert down.iterations.tolist() == [[40, 10, 10]] * 2


def test_warm_start_is_deterministic_and_batch_invariant(tiny_cnn, native_kernels):
    x, t = images(5), torch.arange(5) % 5
    kw = dict(KW, areas=[0.05, 0.1, 0.2], warm_start="up", native_cpu_kernels=native_kernels)
    batch = extremal_perturbation(tiny_cnn, x, t, **kw)
    again = extremal_perturbation(tiny_cnn, x, t, **kw)
    assert torch.equal(again.masks, batch.masks) and torch.equal(again.scores, batch.scores)
    for i in (0, 4):
        alone = extremal_perturbation(tiny_cnn, x[i : i + 1], t[i : i + 1], **kw)
        assert (batch.masks[i] - alone.masks[0]).abs().max() <= 1e-4


def test_settings_refuse_what_warm_start_cannot_do(tiny_cnn):
    with pytest.raises(ValueError, match="warm_start must be one of"):
        ExtremalSettings.from_flat(warm_start="sideways")
    with pytest.raises(ValueError, match="not with stop_tolerance or keep_history"):
        ExtremalSettings.from_flat(warm_start="up", stop_tolerance=1e-2)
    with pytest.raises(ValueError, match="warm_lambda must be one of"):
        ExtremalSettings.from_flat(warm_start="up", warm_lambda="middle")
    with pytest.raises(ValueError, match="warm_iter must be a positive integer"):
        ExtremalSettings.from_flat(warm_start="up", warm_iter=0)
    with pytest.raises(ValueError, match="extremal perturbation only"):
        channel_perturbation(tiny_cnn, images(), [0, 1], areas=[0.5], layer="3", max_iter=3, warm_start="up")
