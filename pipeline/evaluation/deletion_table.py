"""Deletion / insertion summary: per method, the mean (and standard deviation) of the per-row
AUCs over the scored rows of an evaluation output, and the SRG (insertion minus deletion mean:
the mean SRG; only when the deletion substrate is ``blur``, ``pipeline.metrics.srg``), read part
by part (only the AUC columns);
printed and written as CSV and Parquet (plain Arrow types)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.evaluation.table_files import write_table_files
from pipeline.io.parts import iter_part_batches, output_part_urls
from pipeline.storage import Storage

SUMMARY = "deletion_insertion"
_METRICS = ("deletion_auc", "insertion_auc", "road_morf_auc", "road_lerf_auc")  # ROAD's: with --road only


@dataclass
class MethodTally:
    """Running sums of one method's rows: ``n`` scored rows; per metric (``_METRICS``) the rows
    that have it, their sum and sum of squares."""

    rows: int = 0
    errors: int = 0
    n: int = 0
    counts: tuple[int, ...] = (0,) * len(_METRICS)
    sums: tuple[float, ...] = (0.0,) * len(_METRICS)
    squares: tuple[float, ...] = (0.0,) * len(_METRICS)
    steps: frozenset[int] = frozenset()  # pixels per step of the scored rows (one value per run)

    def add(self, *values: np.ndarray) -> None:
        """Scored rows' metrics, one float array ``[n]`` per ``_METRICS`` entry (NaN: absent)."""
        self.n += len(values[0])
        kept = [v[~np.isnan(v)] for v in values]
        self.counts = tuple(c + len(v) for c, v in zip(self.counts, kept))
        self.sums = tuple(s + float(np.sum(v, dtype=np.float64)) for s, v in zip(self.sums, kept))
        self.squares = tuple(s + float(np.sum(np.square(v, dtype=np.float64))) for s, v in zip(self.squares, kept))

    def mean(self, i: int) -> float:
        return self.sums[i] / self.counts[i] if self.counts[i] else math.nan

    def std(self, i: int) -> float:
        """Population standard deviation (0 for one row)."""
        if not self.counts[i]:
            return math.nan
        return math.sqrt(max(0.0, self.squares[i] / self.counts[i] - self.mean(i) ** 2))


def summarize(uri: str, storage: Storage = Storage()) -> dict[str, MethodTally]:
    """method -> its tally, over every part under ``uri`` (an evaluation output). Raises
    FileNotFoundError when there is no part."""
    tallies: dict[str, MethodTally] = {}
    for url in output_part_urls(uri, storage):
        for batch in iter_part_batches(url, storage, ["method", "step", *_METRICS, "error"]):
            cols = batch.to_pydict()
            ok = np.array([e is None for e in cols["error"]], dtype=bool)
            methods = np.array([m or "" for m in cols["method"]], dtype=object)
            # a part written without ROAD (or before it) lacks those columns: NaN
            values = [np.array([np.nan if v is None else v for v in cols.get(k, [None] * len(ok))], dtype=np.float64)
                      for k in _METRICS]
            for m in dict.fromkeys(methods):
                sel = methods == m
                t = tallies.setdefault(m, MethodTally())
                t.rows += int(sel.sum())
                t.errors += int((sel & ~ok).sum())
                t.add(*(v[sel & ok] for v in values))
                t.steps |= {int(v) for v, s in zip(cols["step"], sel & ok) if s and v is not None}
    return tallies


def summary_table(tallies: dict[str, MethodTally], substrate: str | None = None) -> pa.Table:
    """``method, rows, errors, scored, deletion_auc, deletion_std, insertion_auc, insertion_std``
    (lower deletion and higher insertion AUC are better), ``srg`` (higher is better; null unless the
    deletion substrate is ``blur``), ``road_morf_auc, road_lerf_auc`` (means; lower MoRF and higher
    LeRF are better; NaN without ``--road``), plus the rows' ``step`` (null when they differ) and the
    deletion ``substrate``."""
    rows = [{"method": m, "rows": t.rows, "errors": t.errors, "scored": t.n,
             "deletion_auc": t.mean(0), "deletion_std": t.std(0), "insertion_auc": t.mean(1), "insertion_std": t.std(1),
             "srg": t.mean(1) - t.mean(0) if substrate == "blur" else None,
             "road_morf_auc": t.mean(2), "road_lerf_auc": t.mean(3),
             "step": next(iter(t.steps)) if len(t.steps) == 1 else None, "deletion_substrate": substrate}
            for m, t in sorted(tallies.items())]
    f64 = pa.float64()
    schema = pa.schema([("method", pa.string()), ("rows", pa.int64()), ("errors", pa.int64()), ("scored", pa.int64()),
                        ("deletion_auc", f64), ("deletion_std", f64), ("insertion_auc", f64), ("insertion_std", f64),
                        ("srg", f64), ("road_morf_auc", f64), ("road_lerf_auc", f64), ("step", pa.int32()),
                        ("deletion_substrate", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def format_summary(tallies: dict[str, MethodTally]) -> str:
    lines = [f"{'method':<24} {'deletion':>9} {'insertion':>9} {'rows':>8} {'errors':>7}"]
    for m, t in sorted(tallies.items()):
        lines.append(f"{m:<24} {t.mean(0):9.4f} {t.mean(1):9.4f} {t.n:8d} {t.errors:7d}")
    lines.append("AUC of the target's probability (deletion: lower is better; insertion: higher is better)")
    return "\n".join(lines)


def write_summary(out_uri: str, table: pa.Table, storage: Storage = Storage()) -> list[str]:
    """``<out>/deletion_insertion.csv`` and ``.parquet``; returns the URLs."""
    return write_table_files(out_uri, {SUMMARY: table}, storage)
