"""The sanity checks' similarities against hand-worked cases: Spearman with and without ties, the
normalisations, SSIM on a 7x7 pair (one window: the global formula), HOG cells of ramps and the
L2-Hys block normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics.similarity import (
    hog,
    hog_cells,
    l2_hys,
    map_similarity,
    normalize_abs,
    normalize_signed,
    rankdata,
    spearman,
    ssim,
)


def test_spearman_by_hand() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(1 - 6 * 2 / (4 * 15))
    # ties share their average rank: [1, 2.5, 2.5, 4] against [1, 2, 3, 4]
    assert rankdata(np.array([1, 2, 2, 3])).tolist() == [1, 2.5, 2.5, 4]
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman(np.array([5, 1, 3]), np.array([-1, 7, 0])) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.ones(4), np.arange(4)))


def test_normalisations() -> None:
    m = np.arange(-50, 51, dtype=float)  # 101 values, min |m| = 0
    a = normalize_abs(m)
    p99 = np.percentile(np.abs(m), 99)
    assert a.min() == 0 and a.max() == 1
    assert a[100] == 1 and a[50] == 0 and a[60] == pytest.approx(10 / p99)
    s = normalize_signed(m)
    assert s[0] == -1 and s[100] == 1 and s[60] == pytest.approx(10 / abs(np.percentile(m, 99)))


def test_ssim_one_window_is_the_global_formula() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((7, 7)), rng.random((7, 7))
    c1, c2 = 0.01**2, 0.03**2
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cxy = np.cov(x.ravel(), y.ravel())[0, 1]
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y) == pytest.approx(expected, rel=1e-12)
    big = rng.random((20, 24))
    assert ssim(big, big) == pytest.approx(1.0)
    assert ssim(big, 1 - big) < 0


def test_hog_cells_of_ramps() -> None:
    ramp = np.tile(np.arange(6.0), (6, 1))  # value = column: interior gradient 2 along columns, angle 0
    cells = hog_cells(ramp, cell=2)
    assert cells.shape == (3, 3, 9)
    # a cell averages 2x2 pixels; the first and last columns have no gradient
    np.testing.assert_allclose(cells[..., 0], [[1, 2, 1]] * 3)
    assert np.abs(cells[..., 1:]).sum() == 0
    vertical = hog_cells(ramp.T, cell=2)  # angle 90 degrees: bin 4 of [80, 100)
    np.testing.assert_allclose(vertical[..., 4], [[1, 1, 1], [2, 2, 2], [1, 1, 1]])
    assert np.abs(np.delete(vertical, 4, axis=2)).sum() == 0
    diagonal = hog_cells(ramp + ramp.T, cell=2)  # interior: (2, 2) -> 45 degrees, magnitude 2*sqrt(2)
    assert diagonal[1, 1, 2] == pytest.approx(2 * math.sqrt(2))


def test_l2_hys_and_hog_layout() -> None:
    np.testing.assert_allclose(l2_hys(np.array([3.0, 4.0])), [1 / math.sqrt(2)] * 2, rtol=1e-6)
    v = np.array([0.1, 1.0])
    n = v / math.sqrt(1.01)
    clipped = np.minimum(n, 0.2)
    np.testing.assert_allclose(l2_hys(v), clipped / np.linalg.norm(clipped), rtol=1e-6)
    rng = np.random.default_rng(1)
    feats = hog(rng.random((64, 80)), cell=16)  # 4 x 5 cells -> 2 x 3 blocks of 3 x 3 x 9
    assert feats.shape == (2 * 3 * 81,)
    assert hog(rng.random((32, 32)), cell=16).size == 0


def test_map_similarity_identity_and_independence() -> None:
    rng = np.random.default_rng(2)
    m = rng.random((64, 64)) - 0.3
    same = map_similarity(m, m)
    assert same == pytest.approx({"spearman_abs": 1.0, "spearman_signed": 1.0, "ssim": 1.0, "hog_spearman": 1.0})
    other = map_similarity(m, rng.random((64, 64)) - 0.3)
    assert abs(other["spearman_abs"]) < 0.1 and abs(other["spearman_signed"]) < 0.1 and other["ssim"] < 0.2
