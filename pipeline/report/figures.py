"""The report's plots (matplotlib, Agg, no display): per-image area-growth bars (the supplement's
figures 6-9), per-class a* histograms and mean v_a per area, as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SATURATION = 1.25  # v_a is clipped at 1.25 (SPEC section 1)
KEPT, STAR, GREY = "#3b528b", "#f98e09", "#9a9a9a"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _area_labels(areas: Sequence[float]) -> list[str]:
    return [f"{100 * float(a):g}%" for a in areas]


def area_growth_bars(areas: Sequence[float], scores: Sequence[float], optimal_area: float | None) -> bytes:
    """One row's v_a per area as bars (a* in orange), with the v = 1 line (the clean score) and
    the 1.25 saturation line. ``areas`` and ``scores``: length A."""
    fig, ax = plt.subplots(figsize=(2.4, 1.9))
    star = None if optimal_area is None else int(np.argmin([abs(float(a) - optimal_area) for a in areas]))
    colours = [STAR if i == star else KEPT for i in range(len(areas))]
    ax.bar(range(len(areas)), np.minimum(np.asarray(scores, float), SATURATION), color=colours)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.axhline(SATURATION, color=GREY, lw=0.8, ls=":")
    ax.set_ylim(min(0.0, float(np.min(scores))) - 0.05, SATURATION + 0.1)
    ax.set_xticks(range(len(areas)), _area_labels(areas), fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("$v_a$", fontsize=8)
    ax.set_title("area growth", fontsize=8)
    fig.tight_layout(pad=0.3)
    return _png(fig)


def optimal_area_histograms(
    areas: Sequence[float], per_class: dict[int, tuple[dict[float, int], int]], names: dict[int, str]
) -> bytes:
    """a* per class: ``per_class`` class -> ({a*: rows}, rows whose a* was not reached); one small
    histogram per class (bars per area, 'not reached' of the largest area hatched)."""
    classes = list(per_class)
    cols = min(4, max(1, len(classes)))
    rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel()[len(classes):]:
        ax.axis("off")
    labels = _area_labels(areas)
    for ax, c in zip(axes.ravel(), classes):
        counts, unreached = per_class[c]
        heights = np.array([counts.get(round(float(a), 6), 0) for a in areas], float)
        reached = heights.copy()
        reached[-1] = max(0.0, reached[-1] - unreached)
        ax.bar(range(len(areas)), reached, color=KEPT)
        ax.bar(len(areas) - 1, heights[-1] - reached[-1], bottom=reached[-1], color="white", edgecolor=KEPT, hatch="///")
        ax.set_xticks(range(len(areas)), labels, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{names.get(c, c)}: {int(heights.sum())} rows", fontsize=8)
    fig.suptitle("a* per class (hatched: no area reached v = 1)", fontsize=9)
    fig.tight_layout(pad=0.4)
    return _png(fig)


def mean_scores(areas: Sequence[float], per_class: dict[int, tuple[np.ndarray, np.ndarray]], names: dict[int, str]) -> bytes:
    """Mean v_a per area (left) and the share of rows with v_a >= 1 (right), one line per class and
    all classes together in black. ``per_class`` class -> (mean v_a ``[A]``, share ``[A]``)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 2.6))
    x = np.arange(len(areas))
    for c, (mean, share) in per_class.items():
        if c == -1:
            continue
        left.plot(x, mean, marker="o", lw=1, ms=3, label=str(names.get(c, c)))
        right.plot(x, 100 * share, marker="o", lw=1, ms=3)
    if -1 in per_class:
        mean, share = per_class[-1]
        left.plot(x, mean, color="black", marker="s", lw=2, label="all")
        right.plot(x, 100 * share, color="black", marker="s", lw=2)
    left.axhline(1.0, color="black", lw=0.8, ls="--")
    left.axhline(SATURATION, color=GREY, lw=0.8, ls=":")
    left.set_ylim(top=SATURATION + 0.1)
    for ax, title in ((left, "mean $v_a$ per area"), (right, "rows with $v_a \\geq 1$ (%)")):
        ax.set_xticks(x, _area_labels(areas), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(title, fontsize=9)
    if len(per_class) <= 13:
        left.legend(fontsize=6, ncol=2)
    fig.tight_layout(pad=0.4)
    return _png(fig)


def similarity_curves(stages: Sequence[dict], metrics: Sequence[str]) -> bytes:
    """The sanity check's similarity per randomization stage (figures 10-13's curves): one panel
    per mode, x = the stages top layer first (labelled by the layer each adds), one line per
    metric. ``stages``: rows with ``mode``, ``stage``, ``layer`` and each metric."""
    modes = sorted({s["mode"] for s in stages})
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.0), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = sorted((s for s in stages if s["mode"] == mode), key=lambda s: s["stage"])
        x = np.arange(len(rows))
        for m in metrics:
            ax.plot(x, [r[m] for r in rows], marker="o", ms=3, label=m)
        ax.axhline(0.0, color=GREY, lw=0.6)
        ax.set_xticks(x, [r["layer"] for r in rows], rotation=45, ha="right", fontsize=6)
        ax.set_ylim(-0.3, 1.05)
        ax.set_title(f"{mode} randomization", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("similarity to the trained model", fontsize=7)
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    return _png(fig)
