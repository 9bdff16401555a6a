"""The report's sections for the evaluation jobs' tables found beside each output, one table line
per method (per output): deletion / insertion with SRG and ROAD (``jobs.deletion_insertion``'s
default ``<output>/deletion_insertion/deletion_insertion.csv|parquet``, and the curves of a few
drawn rows from its parts) and eMPRT / sMPRT (``jobs.sanity_check --emprt``'s
``<output>/sanity_check/mprt.csv|parquet``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.metrics.road import FRACTIONS
from pipeline.report import figures
from pipeline.report import html as h
from pipeline.report.facts import read_table_beside
from pipeline.report.scan import RunScan, locate_rows, read_rows
from pipeline.storage import Storage, join

DELETION = "deletion_insertion"  # jobs.deletion_insertion's default --out under the output, and its table
SANITY, MPRT = "sanity_check", "mprt"
CURVE_ROWS = 4  # drawn rows whose curves are plotted


def _lines(scans: Sequence[RunScan], folder: str, name: str, storage: Storage) -> list[tuple[str, dict]]:
    """(table URL, row) for every row of ``<output>/<folder>/<name>.*`` of each output that has one."""
    out = []
    for scan in scans:
        found = read_table_beside(join(scan.uri, folder), name, storage)
        if found is not None:
            out.extend((found[0], r) for r in found[1].to_pylist())
    return out


def _has(lines: list[tuple[str, dict]], column: str) -> bool:
    """Whether any line has a number in ``column`` (ROAD without --road, SRG without blur: none)."""
    return any(isinstance(r.get(column), (int, float)) and not math.isnan(r[column]) for _, r in lines)


def deletion_section(scans: Sequence[RunScan], rows: list[dict[str, Any]], put: Callable[[str, bytes], str],
                     storage: Storage = Storage()) -> str | None:
    """The deletion / insertion table of every output that has one, and the curves of the first
    drawn rows of the primary output (``rows``); None when no output has the table."""
    lines = _lines(scans, DELETION, DELETION, storage)
    if not lines:
        return None
    cols = ["method", "scored", "deletion_auc", "insertion_auc"]
    cols += [c for c in ("srg", "road_morf_auc", "road_lerf_auc") if _has(lines, c)] + ["deletion_substrate"]
    parts = [h.table(cols, [[h.fmt(r.get(c)) for c in cols] for _, r in lines]), h.note(
        f"from {', '.join(dict.fromkeys(u for u, _ in lines))}: mean AUC of the target's probability as the most "
        "salient pixels are deleted (lower is better) or inserted into a blurred image (higher is better)"
        + ("; SRG = LeRF - MoRF area with one occluder (higher is better)" if "srg" in cols else "")
        + ("; ROAD: MoRF / LeRF AUCs with noisy linear imputation (lower MoRF, higher LeRF are better)"
           if "road_morf_auc" in cols else ""))]
    curves = _drawn_curves(scans[0], rows[:CURVE_ROWS], storage)
    if curves:
        parts.append(h.img(put("img/deletion_curves.png", figures.evaluation_curves(curves)),
                           f"deletion / insertion curves of {len(curves)} drawn rows ({scans[0].method})",
                           "curves of drawn rows"))
    return "".join(parts)


def _drawn_curves(scan: RunScan, rows: list[dict[str, Any]], storage: Storage) -> list[tuple[str, dict]]:
    """(title, {name: (x, y)}) per drawn row scored by the deletion job (read from its parts)."""
    wanted = {(r["shard"], r["key"], r["target"]) for r in rows}
    try:
        located = locate_rows(join(scan.uri, DELETION), wanted, storage)
    except FileNotFoundError:
        return []
    keys = [k for k in ((r["shard"], r["key"], r["target"]) for r in rows) if k in located]
    out = []
    for (_, key, target), r in zip(keys, read_rows([located[k] for k in keys], storage)):
        curves = {}
        for name, col, x in (("deletion", "deletion_curve", None), ("insertion", "insertion_curve", None),
                             ("ROAD MoRF", "road_morf_curve", FRACTIONS), ("ROAD LeRF", "road_lerf_curve", FRACTIONS)):
            y = r.get(col)
            if y:
                curves[name] = (list(x) if x is not None and len(x) == len(y) else np.linspace(0, 1, len(y)), y)
        if curves:
            out.append((f"{key} · class {target}", curves))
    return out


def mprt_section(scans: Sequence[RunScan], storage: Storage = Storage()) -> str | None:
    """eMPRT / sMPRT per method from each output's sanity check; None when none has the table."""
    lines = _lines(scans, SANITY, MPRT, storage)
    if not lines:
        return None
    cols = ["method", "scored", "emprt", "emprt_std", "emprt_vs_model", "explanation_entropy",
            "explanation_entropy_random", "output_entropy", "output_entropy_random"]
    cols += ["smprt", "smprt_std", "smprt_rows", "samples"] if _has(lines, "smprt") else []
    return h.table(cols, [[h.fmt(r.get(c)) for c in cols] for _, r in lines]) + h.note(
        f"from {', '.join(dict.fromkeys(u for u, _ in lines))} (Hedström et al. 2023, as Quantus computes them). "
        "eMPRT: the relative rise of the explanation's histogram entropy (100 bins, nats) from the trained to the fully "
        "randomized model (higher: the explanation reacts to the parameters); emprt_vs_model: that rise over the rise "
        "of the model output's entropy"
        + ("; sMPRT: Spearman of the absolute maps, each averaged over noisy copies of the input, trained vs fully "
           "randomized (lower is better)" if "smprt" in cols else ""))
