"""`schedule="fast"`: the paper's λ range in a third of the iterations, its first 15 % as the
paper's (benchmarks/bench_schedule.py measures it against the paper schedule). Correctness only:
the ramp, deterministic, batch-invariant, the area bound met."""

import math

import pytest
import torch

from extremal_core import ExtremalSettings, channel_perturbation, extremal_perturbation

KW = dict(areas=[0.05, 0.1, 0.2], step=4, sigma=10.0)


def images(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_paper_schedule_is_the_default():
    s = ExtremalSettings()
    assert s.optim.schedule == "paper"
    assert (s.optim.max_iter, s.optim.lambda_growth, s.optim.learning_rate) == (800, 1.0035, 0.01)
    weights = s.optim.lambda_weights()
    assert len(weights) == 800 and weights[0] == 300.0
    assert weights[-1] == pytest.approx(300.0 * 1.0035**799, rel=1e-12)


def test_fast_schedule_keeps_the_papers_start_and_ends_where_the_paper_ends():
    paper = ExtremalSettings().optim.lambda_weights()
    fast = ExtremalSettings.from_flat(schedule="fast").optim.lambda_weights()
    assert len(fast) == 266
    assert fast[:120] == paper[:120]  # the first 15 % of the paper's 800, unchanged
    assert fast[120] == paper[120] and fast[-1] == pytest.approx(paper[-1], rel=1e-12)
    steps = [math.log(b / a) for a, b in zip(fast[120:], fast[121:])]
    assert all(s > 0 for s in steps[1:-1])  # growing all the way
    assert steps[len(steps) // 2] > 3 * steps[0] and steps[len(steps) // 2] > 3 * steps[-1]  # eased in and out
    assert len(ExtremalSettings.from_flat(schedule="fast", max_iter=300).optim.lambda_weights()) == 100
    assert len(ExtremalSettings.from_flat(schedule="fast", max_iter=3).optim.lambda_weights()) == 1
    with pytest.raises(ValueError, match="valid schedules: paper, fast"):
        ExtremalSettings.from_flat(schedule="quick")
    with pytest.raises(ValueError, match="not with schedule='fast'"):
        ExtremalSettings.from_flat(schedule="fast", stop_tolerance=0.01)


def test_fast_schedule_is_deterministic_and_batch_invariant(tiny_cnn, native_kernels):
    x, t = images(6, 32), torch.arange(6) % 5
    kw = dict(KW, schedule="fast", max_iter=90, native_cpu_kernels=native_kernels)
    batch = extremal_perturbation(tiny_cnn, x, t, **kw)
    assert (batch.iterations == 30).all()
    again = extremal_perturbation(tiny_cnn, x, t, **kw)
    assert torch.equal(again.masks, batch.masks) and torch.equal(again.scores, batch.scores)
    for i in (0, 5):
        alone = extremal_perturbation(tiny_cnn, x[i : i + 1], t[i : i + 1], **kw)
        assert (batch.masks[i] - alone.masks[0]).abs().max() <= 1e-4
        assert torch.allclose(batch.rewards[i], alone.rewards[0], atol=1e-4)


def test_fast_schedule_meets_the_area_bound(demo_images):
    model, x, labels, _ = demo_images
    areas = [0.05, 0.1, 0.2, 0.4]
    r = extremal_perturbation(model, x[:2], labels[:2], areas=areas, schedule="fast", step=4, sigma=10.0)
    assert (r.iterations == 266).all()
    assert (r.achieved_areas - torch.tensor(areas)).abs().max() <= 0.02, r.achieved_areas


def test_channel_perturbation_refuses_the_fast_schedule(tiny_cnn):
    with pytest.raises(ValueError, match="extremal perturbation only"):
        channel_perturbation(tiny_cnn, images(), [0, 1], areas=[0.5], layer="3", max_iter=3, schedule="fast")
