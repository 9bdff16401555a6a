"""eMPRT and sMPRT (``pipeline.metrics.mprt``) against Quantus 0.6.0's numbers on a small problem
(``tests.evaluation.quantus_mprt_reference``: the problem, and the command that printed the
numbers recorded here), analytic cases of the histogram entropy, the batched Spearman against
the scipy transcription, and the smoothing wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from extremal_core.methods import Explanation
from pipeline.evaluation.mprt_task import SmoothedExplainer
from pipeline.metrics.mprt import (
    discrete_entropy,
    emprt_scores,
    noisy_copies,
    output_entropy,
    smprt_similarity,
    spearman,
)
from pipeline.metrics.similarity import spearman as spearman_np
from tests.evaluation.quantus_mprt_reference import problem, randomized_like_quantus, saliency

# Printed by ``PYTHONPATH=.:/tmp/qref python -m tests.evaluation.quantus_mprt_reference`` (Quantus 0.6.0).
QUANTUS_EMPRT = [0.0163871389, 0.0295945493, -0.0760653953, -0.0620081483, 0.0037086132, -0.0257603802]
QUANTUS_MODEL_RISE = [0.9923139356, 1.0212440878, 0.9933328745, 1.0332482042, 0.9785604311, 1.01261759]
QUANTUS_VS_MODEL = [1.0242596647, 1.0081767538, 0.9301359377, 0.9078088381, 1.025699161, 0.9621002336]
QUANTUS_SMPRT = [0.0583333333, -0.1431318681, 0.0865842491, 0.1295787546, 0.1070512821, -0.154029304]


def test_discrete_entropy_analytic_cases() -> None:
    const = torch.full((1, 5, 5), 3.0)
    ramp = torch.arange(200, dtype=torch.float64).reshape(1, 10, 20)  # two values in each of 100 bins
    two = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    skew = torch.tensor([[0.0, 0.0, 0.0, 1.0]])  # 3/4 in the first bin, 1/4 in the last (closed)
    h = discrete_entropy(torch.cat([const.reshape(1, -1).double(), ramp.reshape(1, -1)[:, :25]], 0))
    assert h[0] == 0 and h[1] == pytest.approx(math.log(25))  # 25 values: 25 of the 100 bins, one each
    assert discrete_entropy(ramp).item() == pytest.approx(math.log(100))
    assert discrete_entropy(two).item() == pytest.approx(math.log(2))
    assert discrete_entropy(skew).item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert output_entropy(torch.zeros(2, 7)).tolist() == pytest.approx([math.log(7)] * 2)


def test_emprt_matches_quantus() -> None:
    model, x, y = problem()
    rand = randomized_like_quantus(model)
    h, hr = discrete_entropy(torch.from_numpy(saliency(model, x, y))), discrete_entropy(torch.from_numpy(saliency(rand, x, y)))
    with torch.no_grad():
        o, orand = output_entropy(model(torch.from_numpy(x))), output_entropy(rand(torch.from_numpy(x)))
    s = emprt_scores(h, hr, o, orand)
    assert s["emprt"].tolist() == pytest.approx(QUANTUS_EMPRT, abs=1e-6)
    assert s["explanation_rise"].tolist() == pytest.approx([1 + v for v in QUANTUS_EMPRT], abs=1e-6)
    assert s["model_rise"].tolist() == pytest.approx(QUANTUS_MODEL_RISE, abs=1e-6)
    assert s["emprt_vs_model"].tolist() == pytest.approx(QUANTUS_VS_MODEL, abs=1e-6)
    zero = emprt_scores(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), o[:1], orand[:1])
    assert math.isnan(zero["emprt"].item())  # a constant original map: no relative rise


def test_smprt_matches_quantus() -> None:
    """Quantus' noise comes from numpy's global stream (seeded 0): drawn here in its order (the
    explanations it compares, the original model's it also computes, the randomised model's)."""
    model, x, y = problem()
    rand = randomized_like_quantus(model)
    rng, n = np.random.RandomState(0), 3
    std = 0.1 * (x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True))

    def smoothed(m: torch.nn.Module) -> torch.Tensor:
        eps = [rng.randn(*x.shape) * std for _ in range(n - 1)] + [np.zeros_like(x)]
        return torch.from_numpy(sum(saliency(m, x + e, y) / n for e in eps))

    original = smoothed(model)
    smoothed(model)  # Quantus' "original" layer entry: drawn, not compared
    assert smprt_similarity(original, smoothed(rand)).tolist() == pytest.approx(QUANTUS_SMPRT, abs=1e-9)


def test_batched_spearman_and_noisy_copies() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 30), generator=g).double()  # many ties
    b = torch.randn(4, 30, generator=g, dtype=torch.float64)
    b[2] = 1.0  # constant: NaN
    got = spearman(a, b).tolist()
    want = [spearman_np(a[i].numpy(), b[i].numpy()) for i in range(4)]
    assert got[2] != got[2] and want[2] != want[2]
    assert [v for i, v in enumerate(got) if i != 2] == pytest.approx([v for i, v in enumerate(want) if i != 2], abs=1e-12)

    x = torch.rand(2, 3, 16, 16, generator=g) * torch.tensor([1.0, 4.0])[:, None, None, None]
    c = torch.stack(list(noisy_copies(x, 41, 0.1, torch.Generator().manual_seed(1))))
    assert c.shape == (41, 2, 3, 16, 16) and torch.equal(c[-1], x)
    ranges = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    noise_std = (c[:-1] - x).std(dim=(0, 2, 3, 4))
    assert (noise_std / (0.1 * ranges)).tolist() == pytest.approx([1.0, 1.0], abs=0.05)


class _Doubling:
    """An explainer whose map is twice the image's first channel, with one value column."""

    num_maps = 1

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> Explanation:
        return Explanation(2 * images[:, :1], ("map",), {"score": images.sum(dim=(1, 2, 3))})


def test_smoothed_explainer_averages_maps_keeps_clean_values() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = SmoothedExplainer(_Doubling(), samples=1).explain(x, torch.zeros(2))
    assert torch.equal(plain.maps, 2 * x[:, :1])
    e = SmoothedExplainer(_Doubling(), samples=5, magnitude=0.1, seed=3)
    assert e.num_maps == 1  # the wrapped explainer's attributes
    out = e.explain(x, torch.zeros(2))
    copies = torch.stack(list(noisy_copies(x, 5, 0.1, torch.Generator().manual_seed(3))))
    assert torch.allclose(out.maps, 2 * copies[:, :, :1].mean(dim=0), atol=1e-6)
    assert torch.equal(out.values["score"], x.sum(dim=(1, 2, 3)))
    assert torch.equal(e.explain(x, torch.zeros(2)).maps, out.maps)  # seeded: the same noise each call
