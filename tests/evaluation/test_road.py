"""ROAD's noisy linear imputation against the reference's sparse solve (tleemann/road_evaluation,
``NoisyLinearImputer``: one equation per removed pixel and channel, ``-s_i x_i + sum_{j removed}
w_ij x_j = -sum_{j kept} w_ij v_j``, ``spsolve``), recomputed here with scipy; the removal order
and the curves' shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics.road import FRACTIONS, NEIGHBOURS, linear_impute, removal_masks, road_curves

scipy_sparse = pytest.importorskip("scipy.sparse")
spsolve = pytest.importorskip("scipy.sparse.linalg").spsolve


def _reference_solve(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The reference's system for ``img`` ``[C, H, W]`` and ``removed`` ``[H, W]``, solved exactly
    (no noise): the imputed image."""
    c, h, w = img.shape
    unknown = np.flatnonzero(removed.ravel())
    var = -np.ones(h * w, dtype=int)
    var[unknown] = np.arange(len(unknown))
    a = scipy_sparse.lil_matrix((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), c))
    flat = img.reshape(c, -1)
    for k, i in enumerate(unknown):
        y, x = divmod(int(i), w)
        total = 0.0
        for (dy, dx), weight in NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                continue
            total += weight
            j = yy * w + xx
            if var[j] >= 0:
                a[k, var[j]] = weight
            else:
                rhs[k] -= weight * flat[:, j]
        a[k, k] = -total
    out = flat.copy()
    out[:, unknown] = np.asarray(spsolve(scipy_sparse.csc_matrix(a), rhs)).reshape(len(unknown), c).T
    return out.reshape(c, h, w)


def test_imputation_matches_the_reference_sparse_solve() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 3, 13, 17))
    removed = np.zeros((3, 13, 17), bool)
    removed[0] = rng.random((13, 17)) < 0.5  # scattered pixels
    removed[1, 2:11, 3:15] = True  # one large hole
    removed[2] = rng.random((13, 17)) < 0.9  # almost everything, touching the border
    ours = linear_impute(torch.from_numpy(imgs), torch.from_numpy(removed), noise=0.0).numpy()
    for k in range(3):
        np.testing.assert_allclose(ours[k], _reference_solve(imgs[k], removed[k]), rtol=0, atol=1e-8)
    # float32 on the default tolerance: the same to 1e-4 (the noise the reference adds is 0.01)
    ours32 = linear_impute(torch.from_numpy(imgs).float(), torch.from_numpy(removed), noise=0.0).numpy()
    np.testing.assert_allclose(ours32, ours, rtol=0, atol=1e-4)


def test_noise_only_on_imputed_pixels() -> None:
    img = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    removed = torch.zeros(2, 9, 9, dtype=torch.bool)
    removed[:, 3:6, 2:7] = True
    clean = linear_impute(img, removed, noise=0.0)
    noisy = linear_impute(img, removed, noise=torch.tensor([0.01, 0.02, 0.0]), generator=torch.Generator().manual_seed(1))
    diff = (noisy - clean)[:, :, ~removed[0]]
    assert float(diff.abs().max()) == 0.0
    jitter = (noisy - clean)[:, :, removed[0]]
    assert 0.004 < float(jitter[:, 0].std()) < 0.02 and 0.01 < float(jitter[:, 1].std()) < 0.04
    assert float(jitter[:, 2].abs().max()) == 0.0


def test_removal_orders_and_counts() -> None:
    """MoRF at p removes the int(p H W) most relevant pixels (the reference's remove=True), LeRF
    the int(p H W) least relevant ones; ties by pixel index."""
    sal = torch.arange(20, dtype=torch.float32).view(1, 4, 5)
    morf = removal_masks(sal, (0.1, 0.5), "morf")
    lerf = removal_masks(sal, (0.1, 0.5), "lerf")
    assert morf.shape == (1, 2, 4, 5)
    assert morf[0, 0].view(-1).nonzero().view(-1).tolist() == [18, 19]
    assert lerf[0, 0].view(-1).nonzero().view(-1).tolist() == [0, 1]
    assert int(morf[0, 1].sum()) == int(lerf[0, 1].sum()) == 10
    flat = torch.zeros(1, 4, 5)
    assert removal_masks(flat, (0.1,), "morf")[0, 0].view(-1).nonzero().view(-1).tolist() == [0, 1]


def test_curves_on_a_model() -> None:
    """A model whose logit for class 1 is the mean of channel 0: removing the bright region
    first (MoRF by a saliency that is the image) lowers it more than LeRF does."""
    torch.manual_seed(0)
    img = torch.zeros(2, 3, 16, 16)
    img[:, 0, 4:10, 3:12] = 5.0

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x[:, 0].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(m), m], dim=1)

    sal = img[:, 0] + 0.01 * torch.rand(2, 16, 16)
    t = torch.tensor([1, 1])
    morf = road_curves(Mean(), img, sal, t, "morf", forward_batch=5)
    lerf = road_curves(Mean(), img, sal, t, "lerf", forward_batch=5)
    assert morf.curves.shape == (2, len(FRACTIONS)) and morf.fractions == FRACTIONS
    assert bool((morf.auc < lerf.auc).all())
    assert bool((morf.curves[:, 1:] <= morf.curves[:, :-1] + 1e-3).all())  # removing more bright pixels
    again = road_curves(Mean(), img, sal, t, "morf", forward_batch=5)
    torch.testing.assert_close(again.curves, morf.curves)  # the noise is seeded
