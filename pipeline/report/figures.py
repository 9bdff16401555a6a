"""The report's plots (matplotlib, Agg, no display): per-image area-growth bars (the supplement's
figures 6-9), per-class a* histograms and mean v_a per area, as PNG bytes.

Each plot is drawn at the pixel size the page shows it (``DPI``; the page never scales a plot
down) with no text under ``FONT`` points (11 px at 100 dpi). ``*_figure`` builds the figure,
the function of the same name without it gives its PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.report.html import area  # noqa: E402

SATURATION = 1.25  # v_a is clipped at 1.25 (docs/algorithm.md, "Scores per area")
KEPT, STAR, GREY = "#3b528b", "#f98e09", "#9a9a9a"
DPI = 100  # figure inches x DPI = the PNG's pixels = its size on the page
FONT, TITLE = 8, 9  # points: 11 and 12.5 px at DPI


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _area_labels(areas: Sequence[float]) -> list[str]:
    return [area(a) for a in areas]


def area_growth_bars(areas: Sequence[float], scores: Sequence[float], optimal_area: float | None) -> bytes:
    return _png(area_growth_bars_figure(areas, scores, optimal_area))


def area_growth_bars_figure(areas: Sequence[float], scores: Sequence[float], optimal_area: float | None) -> plt.Figure:
    """One row's v_a per area as bars (a* in orange), with the v = 1 line (the clean score) and
    the 1.25 saturation line. ``areas`` and ``scores``: length A."""
    fig, ax = plt.subplots(figsize=(2.2, 1.6), dpi=DPI)
    star = None if optimal_area is None else int(np.argmin([abs(float(a) - optimal_area) for a in areas]))
    colours = [STAR if i == star else KEPT for i in range(len(areas))]
    ax.bar(range(len(areas)), np.minimum(np.asarray(scores, float), SATURATION), color=colours)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.axhline(SATURATION, color=GREY, lw=0.8, ls=":")
    ax.set_ylim(min(0.0, float(np.min(scores))) - 0.05, SATURATION + 0.1)
    ax.set_xticks(range(len(areas)), _area_labels(areas), fontsize=FONT)
    ax.tick_params(axis="y", labelsize=FONT)
    ax.set_ylabel("$v_a$", fontsize=FONT)
    ax.set_title("area growth", fontsize=TITLE)
    fig.tight_layout(pad=0.3)
    return fig


def optimal_area_histograms(
    areas: Sequence[float], per_class: dict[int, tuple[dict[float, int], int]], names: dict[int, str]
) -> bytes:
    return _png(optimal_area_histograms_figure(areas, per_class, names))


def optimal_area_histograms_figure(
    areas: Sequence[float], per_class: dict[int, tuple[dict[float, int], int]], names: dict[int, str]
) -> plt.Figure:
    """a* per class: ``per_class`` class -> ({a*: rows}, rows whose a* was not reached); one small
    histogram per class (bars per area, 'not reached' of the largest area hatched)."""
    classes = sorted(per_class)
    cols = min(4, max(1, len(classes)))
    rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False, dpi=DPI)
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
        ax.set_xticks(range(len(areas)), labels, fontsize=FONT)
        ax.tick_params(axis="y", labelsize=FONT)
        ax.set_title(f"{names.get(c, c)}: {int(heights.sum())} rows", fontsize=TITLE)
    fig.suptitle("a* per class (hatched: no area reached v = 1)", fontsize=TITLE)
    fig.tight_layout(pad=0.4)
    return fig


def mean_scores(areas: Sequence[float], per_class: dict[int, tuple[np.ndarray, np.ndarray]], names: dict[int, str]) -> bytes:
    return _png(mean_scores_figure(areas, per_class, names))


def mean_scores_figure(
    areas: Sequence[float], per_class: dict[int, tuple[np.ndarray, np.ndarray]], names: dict[int, str]
) -> plt.Figure:
    """Mean v_a per area (left) and the share of rows with v_a >= 1 (right), one line per class in
    class order and all classes together (key -1) in black, last. ``per_class`` class -> (mean v_a
    ``[A]``, share ``[A]``)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, 3.1), dpi=DPI)
    x = np.arange(len(areas))
    for c in sorted(c for c in per_class if c != -1):
        mean, share = per_class[c]
        left.plot(x, mean, marker="o", lw=1, ms=3, label=str(names.get(c, c)))
        right.plot(x, 100 * share, marker="o", lw=1, ms=3)
    if -1 in per_class:
        mean, share = per_class[-1]
        left.plot(x, mean, color="black", marker="s", lw=2, label="all")
        right.plot(x, 100 * share, color="black", marker="s", lw=2)
    left.axhline(1.0, color="black", lw=0.8, ls="--")
    left.axhline(SATURATION, color=GREY, lw=0.8, ls=":")
    left.set_ylim(top=SATURATION + 0.1)
    # a share is 0..100 %: fixed ticks, so a run where no row reaches v = 1 shows 0, not -0.04
    right.set_ylim(-4, 104)
    right.set_yticks([0, 25, 50, 75, 100])
    for ax, title in ((left, "mean $v_a$ per area"), (right, "rows with $v_a \\geq 1$ (%)")):
        ax.set_xticks(x, _area_labels(areas), fontsize=FONT)
        ax.tick_params(axis="y", labelsize=FONT)
        ax.set_title(title, fontsize=TITLE)
    handles, labels = left.get_legend_handles_labels()
    if len(labels) <= 14:  # below the panels, in class order: inside them it covered the lines
        rows = -(-len(labels) // 7)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=FONT, frameon=False)
        fig.tight_layout(pad=0.4, rect=(0, 0.09 * rows, 1, 1))
    else:
        fig.tight_layout(pad=0.4)
    return fig


def similarity_curves(stages: Sequence[dict], metrics: Sequence[str]) -> bytes:
    """The sanity check's similarity per randomization stage (figures 10-13's curves): one panel
    per mode, x = the stages top layer first (labelled by the layer each adds), one line per
    metric. ``stages``: rows with ``mode``, ``stage``, ``layer`` and each metric."""
    modes = sorted({s["mode"] for s in stages})
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.0), squeeze=False, dpi=DPI)
    for ax, mode in zip(axes[0], modes):
        rows = sorted((s for s in stages if s["mode"] == mode), key=lambda s: s["stage"])
        x = np.arange(len(rows))
        for m in metrics:
            ax.plot(x, [r[m] for r in rows], marker="o", ms=3, label=m)
        ax.axhline(0.0, color=GREY, lw=0.6)
        ax.set_xticks(x, [r["layer"] for r in rows], rotation=45, ha="right", fontsize=FONT)
        ax.set_ylim(-0.3, 1.05)
        ax.set_title(f"{mode} randomization", fontsize=TITLE)
        ax.tick_params(labelsize=FONT)
    axes[0][0].set_ylabel("similarity to the trained model", fontsize=FONT)
    axes[0][-1].legend(fontsize=FONT, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def evaluation_curves(panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]]) -> bytes:
    """Per drawn row, its deletion / insertion curves (and ROAD's MoRF / LeRF where present): one
    panel per row, x = the share of pixels removed (inserted), y = the model's probability for
    the target. ``panels``: (title, {curve name: (x, y)})."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels), 2.7), squeeze=False, dpi=DPI)
    for ax, (title, curves) in zip(axes[0], panels):
        for name, (x, y) in curves.items():
            ax.plot(x, y, marker="o" if len(x) < 12 else None, ms=3, label=name)
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=TITLE)
        ax.set_xlabel("share of pixels", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
    axes[0][0].set_ylabel("probability of the target", fontsize=FONT)
    axes[0][-1].legend(fontsize=FONT, loc="best")
    fig.tight_layout()
    return _png(fig)
