"""How alike two saliency maps are, as the sanity checks measure it (docs/evaluations.md, "Sanity checks"; Adebayo et
al. 2018): Spearman rank correlation of the absolute maps normalised by (x - min)/(p99 - min)
clipped to [0, 1], Spearman of the signed maps divided by |p99| clipped to [-1, 1], SSIM of the
min-max normalised maps, and Spearman of their HOG features. Pure numpy on 2-D maps ``[H, W]``.

SSIM and HOG are transcriptions of scikit-image's defaults (not installed here):
``structural_similarity(a, b, data_range=1)`` (7x7 uniform window with scipy's ``reflect``
boundary, sample covariance, K1 = 0.01, K2 = 0.03, mean over the window-free interior) and
``hog(image, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(3, 3),
block_norm="L2-Hys")`` (central differences, hard orientation bins on [0, 180), cells averaged).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog_spearman")


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties given their average rank (scipy's ``rankdata``)."""
    x = np.asarray(x).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Runs of equal values share the mean of the positions they span.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two same-size arrays (Pearson of average ranks); NaN when either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else math.nan


def normalize_abs(m: np.ndarray) -> np.ndarray:
    """|m| -> (x - min) / (p99 - min) clipped to [0, 1] (Adebayo's grayscale visualisation)."""
    x = np.abs(np.asarray(m, dtype=np.float64))
    lo, hi = x.min(), np.percentile(x, 99)
    return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)


def normalize_signed(m: np.ndarray) -> np.ndarray:
    """m / |p99| clipped to [-1, 1] (the diverging visualisation)."""
    x = np.asarray(m, dtype=np.float64)
    span = abs(np.percentile(x, 99))
    return np.clip(x / span, -1, 1) if span > 0 else np.zeros_like(x)


def normalize_minmax(m: np.ndarray) -> np.ndarray:
    x = np.asarray(m, dtype=np.float64)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _uniform(x: np.ndarray, size: int) -> np.ndarray:
    # scipy.ndimage.uniform_filter, mode "reflect" (= numpy's "symmetric")
    r = size // 2
    return sliding_window_view(np.pad(x, r, mode="symmetric"), (size, size)).mean(axis=(-1, -2))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, win_size: int = 7) -> float:
    """Mean structural similarity of two 2-D images (scikit-image's defaults, see the module)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(x.shape) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}, got {list(x.shape)}")
    n = win_size * win_size
    cov_norm = n / (n - 1)  # sample covariance
    ux, uy = _uniform(x, win_size), _uniform(y, win_size)
    vx = cov_norm * (_uniform(x * x, win_size) - ux * ux)
    vy = cov_norm * (_uniform(y * y, win_size) - uy * uy)
    vxy = cov_norm * (_uniform(x * y, win_size) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return float(s[pad : s.shape[0] - pad, pad : s.shape[1] - pad].mean())


def hog_cells(image: np.ndarray, cell: int = 16, orientations: int = 9) -> np.ndarray:
    """Per-cell orientation histograms ``[H // cell, W // cell, orientations]``: the mean over the
    cell of the gradient magnitude of pixels whose orientation (degrees, [0, 180)) falls in each
    bin; gradients by central differences, zero on the border rows / columns."""
    img = np.asarray(image, dtype=np.float64)
    g_row, g_col = np.zeros_like(img), np.zeros_like(img)
    g_row[1:-1, :] = img[2:, :] - img[:-2, :]
    g_col[:, 1:-1] = img[:, 2:] - img[:, :-2]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    n_r, n_c = img.shape[0] // cell, img.shape[1] // cell
    mag = magnitude[: n_r * cell, : n_c * cell]
    # the bin of each pixel; exactly 180 cannot occur after % 180, but guard the float edge
    bins = np.minimum((orientation[: n_r * cell, : n_c * cell] // (180.0 / orientations)).astype(int), orientations - 1)
    out = np.zeros((n_r, n_c, orientations))
    for k in range(orientations):
        out[..., k] = np.where(bins == k, mag, 0.0).reshape(n_r, cell, n_c, cell).sum(axis=(1, 3)) / (cell * cell)
    return out


def l2_hys(block: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """scikit-image's L2-Hys block normalisation: L2, clip at 0.2, L2 again."""
    out = block / np.sqrt(np.sum(block**2) + eps**2)
    out = np.minimum(out, 0.2)
    return out / np.sqrt(np.sum(out**2) + eps**2)


def hog(image: np.ndarray, cell: int = 16, block: int = 3, orientations: int = 9) -> np.ndarray:
    """HOG feature vector: every ``block`` x ``block`` window of cells (stride one cell),
    L2-Hys normalised, raveled (empty when fewer than ``block`` cells fit). The sanity checks take
    the HOG of the abs-normalised maps."""
    cells = hog_cells(image, cell, orientations)
    n_r, n_c = cells.shape[0] - block + 1, cells.shape[1] - block + 1
    if n_r < 1 or n_c < 1:
        return np.zeros(0)
    blocks = [l2_hys(cells[r : r + block, c : c + block]) for r in range(n_r) for c in range(n_c)]
    return np.stack(blocks).ravel()


def map_similarity(original: np.ndarray, other: np.ndarray, hog_cell: int = 16) -> dict[str, float]:
    """The four similarities of two maps ``[H, W]`` (``METRICS``); NaN where one is undefined
    (a constant map, too small for a HOG block)."""
    h1, h2 = hog(normalize_abs(original), hog_cell), hog(normalize_abs(other), hog_cell)
    return {
        "spearman_abs": spearman(normalize_abs(original), normalize_abs(other)),
        "spearman_signed": spearman(normalize_signed(original), normalize_signed(other)),
        "ssim": ssim(normalize_minmax(original), normalize_minmax(other)),
        "hog_spearman": spearman(h1, h2) if h1.size else math.nan,
    }
