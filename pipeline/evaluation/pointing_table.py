"""The pointing game's result as tables: one row per (method, subset) with the accuracy in % (the
mean of the per-class accuracies) and the energy-based score in % (the mean of the per-class mean
energy shares inside the ground truth; NaN for the ``center`` baseline, which has no map), and
one row per (method, subset, class); printed, and written
as CSV and Parquet (plain Arrow types: pandas, DuckDB read them)."""

from __future__ import annotations

import pyarrow as pa

from pipeline.evaluation.pointing_run import SUBSETS, PartResult
from pipeline.evaluation.table_files import write_table_files
from pipeline.metrics.energy_pointing import EnergyTally
from pipeline.storage import Storage

SUMMARY = "pointing_game"
PER_CLASS = "pointing_game_classes"
COUNTS = "pointing_game_rows"  # what was not scored, and why (the report says it under an empty table)


def _order(result: PartResult) -> list[tuple[str, str]]:
    # the job's method(s) first, the center baseline last; "all" before "difficult"
    methods = sorted({m for m, _ in result.tallies}, key=lambda m: (m == "center", m))
    return [(m, s) for m in methods for s in SUBSETS if (m, s) in result.tallies]


def _energy(result: PartResult, method: str, subset: str) -> EnergyTally:
    return result.energies.get((method, subset), EnergyTally())


def summary_table(result: PartResult) -> pa.Table:
    """``method, subset, accuracy`` (%), ``hits, misses, pairs, classes, energy`` (%)."""
    rows = []
    for method, subset in _order(result):
        t = result.tallies[(method, subset)]
        rows.append({"method": method, "subset": subset, "accuracy": 100 * t.accuracy(), "hits": sum(t.hits.values()),
                     "misses": sum(t.misses.values()), "pairs": t.pairs, "classes": len(t.classes()),
                     "energy": 100 * _energy(result, method, subset).mean()})
    schema = pa.schema([("method", pa.string()), ("subset", pa.string()), ("accuracy", pa.float64()),
                        ("hits", pa.int64()), ("misses", pa.int64()), ("pairs", pa.int64()), ("classes", pa.int64()),
                        ("energy", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def class_table(result: PartResult) -> pa.Table:
    """``method, subset, class, hits, misses, accuracy, energy`` (%) per class with a counted pair."""
    rows = []
    for method, subset in _order(result):
        t = result.tallies[(method, subset)]
        energy = _energy(result, method, subset).class_means()
        for c, acc in t.class_accuracies().items():
            rows.append({"method": method, "subset": subset, "class": c, "hits": t.hits.get(c, 0),
                         "misses": t.misses.get(c, 0), "accuracy": 100 * acc,
                         "energy": 100 * energy.get(c, float("nan"))})
    schema = pa.schema([("method", pa.string()), ("subset", pa.string()), ("class", pa.int32()),
                        ("hits", pa.int64()), ("misses", pa.int64()), ("accuracy", pa.float64()), ("energy", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def counts_table(result: PartResult) -> pa.Table:
    """One row: ``rows, error_rows, unannotated, no_ground_truth`` (the rows not scored, by reason)."""
    return pa.Table.from_pylist([{"rows": result.rows, "error_rows": result.errors, "unannotated": result.unannotated,
                                  "no_ground_truth": result.no_ground_truth}])


def format_summary(result: PartResult, published: dict[str, tuple[float, float]] | None = None) -> str:
    """The summary as text: one line per method with All / Difficult %, as TorchRay's table reads;
    with ``published`` (a cell of ``published.published_table()``), TorchRay's numbers beside."""
    paper = f" {'paper all':>9} {'paper diff':>10}" if published is not None else ""
    lines = [f"{'method':<24} {'all %':>7} {'diff %':>7} {'energy %':>9} {'pairs':>8}{paper}"]
    for method in dict.fromkeys(m for m, _ in _order(result)):
        acc = {s: result.tallies[(method, s)] for s in SUBSETS if (method, s) in result.tallies}
        diff = f"{100 * acc['difficult'].accuracy():7.1f}" if "difficult" in acc else f"{'-':>7}"
        energy = 100 * _energy(result, method, "all").mean()
        if published is not None:
            a, d = published.get(method, (float("nan"), float("nan")))
            paper = f" {a:9.1f} {d:10.1f}"
        lines.append(f"{method:<24} {100 * acc['all'].accuracy():7.1f} {diff} {energy:9.1f} {acc['all'].pairs:8d}{paper}")
    lines.append(f"rows: {result.rows} ({result.errors} error rows, {result.unannotated} without annotations, "
                 f"{result.no_ground_truth} pairs without ground truth or all difficult)")
    return "\n".join(lines)


def write_tables(out_uri: str, result: PartResult, storage: Storage = Storage()) -> list[str]:
    """Write the tables as ``<out>/pointing_game[_classes|_rows].csv|parquet``; returns the URLs."""
    tables = {SUMMARY: summary_table(result), PER_CLASS: class_table(result), COUNTS: counts_table(result)}
    return write_table_files(out_uri, tables, storage)
