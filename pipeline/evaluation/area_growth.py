"""Area growth (docs/evaluations.md, "Area growth"; supplement eq. 1) summarised per class from extremal rows: the
distribution of a* over the job's areas, the share of rows that reach v >= 1
(``optimal_area_reached``), the mean of a* over those, and the mean v_a per area.

``AreaGrowth.add`` is the pure part (arrays in, running sums updated); ``area_growth`` streams a
job's parts by record batches of the five small columns it needs (never the maps), so memory does
not grow with the dataset. Rows with ``error`` set or without ``scores`` (another method's) are
counted as skipped. A row's a* is taken as written (the engine's: the smallest area whose v_a
reaches 1; the largest area, not reached, otherwise).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.evaluation.table_files import write_table_files
from pipeline.io.parts import iter_part_batches, output_part_urls
from pipeline.storage import Storage

ALL = None  # the class key of the all-classes rows (null in the tables)
_COLUMNS = ["target", "areas", "scores", "optimal_area", "optimal_area_reached", "error"]
TABLES = ("area_growth_classes", "area_growth_optimal_area", "area_growth_scores")


def _area(a: float) -> float:
    # float32 areas from Parquet (0.05 -> 0.0500000007) keyed as the decimals they were written as
    return round(float(a), 6)


@dataclass
class ClassSums:
    """One class's running sums: rows, reached, sum of a* over reached rows, reached rows per a*,
    per area the sum of v_a and its count."""

    rows: int = 0
    reached: int = 0
    optimal_sum: float = 0.0
    optimal_counts: dict[float, int] = field(default_factory=lambda: defaultdict(int))
    score_sums: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    score_counts: dict[float, int] = field(default_factory=lambda: defaultdict(int))

    def merge(self, other: ClassSums) -> None:
        self.rows += other.rows
        self.reached += other.reached
        self.optimal_sum += other.optimal_sum
        for a, n in other.optimal_counts.items():
            self.optimal_counts[a] += n
        for a, s in other.score_sums.items():
            self.score_sums[a] += s
            self.score_counts[a] += other.score_counts[a]


@dataclass
class AreaGrowth:
    """Per class (``int``; ``ALL`` for every row) sums, the areas seen, and the rows skipped."""

    classes: dict[int | None, ClassSums] = field(default_factory=dict)
    areas: set[float] = field(default_factory=set)
    skipped: int = 0

    def add(self, targets: np.ndarray, areas: Sequence[float], scores: np.ndarray, optimal_area: np.ndarray,
            reached: np.ndarray) -> None:
        """N rows that share one list of A areas: ``targets`` int ``[N]``, ``scores`` v_a
        ``[N, A]``, ``optimal_area`` a* ``[N]``, ``reached`` bool ``[N]``."""
        keys = [_area(a) for a in areas]
        scores = np.asarray(scores, dtype=np.float64).reshape(len(targets), len(keys))
        optimal = np.asarray(optimal_area, dtype=np.float64)
        reached = np.asarray(reached, dtype=bool)
        targets = np.asarray(targets)
        self.areas.update(keys)
        for c in [ALL, *np.unique(targets).tolist()]:
            sel = np.ones(len(targets), bool) if c is ALL else targets == c
            s = self.classes.setdefault(c if c is ALL else int(c), ClassSums())
            s.rows += int(sel.sum())
            hit = sel & reached
            s.reached += int(hit.sum())
            s.optimal_sum += float(optimal[hit].sum())
            for a, n in zip(*np.unique(optimal[hit], return_counts=True)):
                s.optimal_counts[_area(a)] += int(n)
            for j, a in enumerate(keys):
                s.score_sums[a] += float(scores[sel, j].sum())
                s.score_counts[a] += int(sel.sum())

    def merge(self, other: AreaGrowth) -> AreaGrowth:
        for c, s in other.classes.items():
            self.classes.setdefault(c, ClassSums()).merge(s)
        self.areas |= other.areas
        self.skipped += other.skipped
        return self

    def _order(self) -> list[int | None]:
        return [ALL, *sorted(c for c in self.classes if c is not ALL)] if self.classes else []


def add_batch(result: AreaGrowth, batch: pa.RecordBatch) -> None:
    """The extremal rows of a record batch of ``_COLUMNS``, grouped by their list of areas."""
    cols = batch.to_pydict()
    groups: dict[tuple[float, ...], list[int]] = defaultdict(list)
    for i, (err, sc, ar) in enumerate(zip(cols["error"], cols["scores"], cols["areas"])):
        if err is not None or sc is None or ar is None or cols["optimal_area"][i] is None or len(sc) != len(ar):
            result.skipped += 1
        else:
            groups[tuple(ar)].append(i)
    for areas, idx in groups.items():
        result.add(np.array([cols["target"][i] for i in idx]), areas, np.array([cols["scores"][i] for i in idx]),
                   np.array([cols["optimal_area"][i] for i in idx]),
                   np.array([bool(cols["optimal_area_reached"][i]) for i in idx]))


def area_growth(uri: str, storage: Storage = Storage(), batch_rows: int = 4096) -> AreaGrowth:
    """The summary over every part under ``uri`` (an attribution output), streamed. Raises
    FileNotFoundError when there is no part."""
    result = AreaGrowth()
    for url in output_part_urls(uri, storage):
        try:
            for batch in iter_part_batches(url, storage, _COLUMNS, batch_rows, require=_COLUMNS):
                add_batch(result, batch)
        except ValueError as exc:
            raise ValueError(f"{exc}: not an attribution part") from None
    return result


# ------------------------------------------------------------------------------------------------
# Tables


def tables(result: AreaGrowth) -> dict[str, pa.Table]:
    """``area_growth_classes``: ``class`` (null = all), ``rows``, ``reached``, ``share_reached``,
    ``mean_optimal_area`` (over the reached rows); ``area_growth_optimal_area``: ``class``,
    ``area``, ``rows`` (reached rows whose a* is that area), ``share`` (of the class's rows);
    ``area_growth_scores``: ``class``, ``area``, ``mean_score`` (mean v_a), ``rows``."""
    areas = sorted(result.areas)
    classes, hist, scores = [], [], []
    for c in result._order():
        s = result.classes[c]
        classes.append({"class": c, "rows": s.rows, "reached": s.reached,
                        "share_reached": s.reached / s.rows if s.rows else math.nan,
                        "mean_optimal_area": s.optimal_sum / s.reached if s.reached else math.nan})
        for a in areas:
            n = s.optimal_counts.get(a, 0)
            hist.append({"class": c, "area": a, "rows": n, "share": n / s.rows if s.rows else math.nan})
            k = s.score_counts.get(a, 0)
            scores.append({"class": c, "area": a, "mean_score": s.score_sums.get(a, 0.0) / k if k else math.nan,
                           "rows": k})
    i32, i64, f64 = pa.int32(), pa.int64(), pa.float64()
    return {
        TABLES[0]: pa.Table.from_pylist(classes, schema=pa.schema([("class", i32), ("rows", i64), ("reached", i64),
                                                                  ("share_reached", f64), ("mean_optimal_area", f64)])),
        TABLES[1]: pa.Table.from_pylist(hist, schema=pa.schema([("class", i32), ("area", f64), ("rows", i64),
                                                               ("share", f64)])),
        TABLES[2]: pa.Table.from_pylist(scores, schema=pa.schema([("class", i32), ("area", f64), ("mean_score", f64),
                                                                 ("rows", i64)])),
    }


def format_summary(result: AreaGrowth, max_classes: int = 20) -> str:
    """One line per class (all classes first, then up to ``max_classes``): rows, share reaching
    v >= 1, the a* histogram (% of rows per area) and mean v_a per area."""
    areas = sorted(result.areas)
    head = " ".join(f"{a:>7g}" for a in areas)
    lines = [f"{'class':>6} {'rows':>7} {'v>=1 %':>7} | a* % of rows: {head} | mean v_a: {head}"]
    order = result._order()
    for c in order[: max_classes + 1]:
        s = result.classes[c]
        hist = " ".join(f"{100 * s.optimal_counts.get(a, 0) / s.rows:7.1f}" for a in areas)
        mean = " ".join(f"{s.score_sums.get(a, 0.0) / max(1, s.score_counts.get(a, 0)):7.3f}" for a in areas)
        lines.append(f"{'all' if c is ALL else c:>6} {s.rows:7d} {100 * s.reached / s.rows:7.1f} | "
                     f"{'':14}{hist} | {'':10}{mean}")
    if len(order) > max_classes + 1:
        lines.append(f"... {len(order) - max_classes - 1} more classes in the tables")
    lines.append(f"skipped rows (errors, other methods): {result.skipped}")
    return "\n".join(lines)


def write_tables(out_uri: str, result: AreaGrowth, storage: Storage = Storage()) -> list[str]:
    """Each table as ``<out>/<name>.csv`` and ``.parquet``; returns the URLs."""
    return write_table_files(out_uri, tables(result), storage)
