"""One streaming pass over an attribution output's small columns: the run's aggregates (a* per
class, v_a per area, error rows) and a deterministic sample of N rows per class, located by
(part, row group, row) so that only the drawn rows are read afterwards.

Memory does not grow with the run: the pass reads one row group of the scalar columns at a time
(never ``maps``), keeps counters per (class, area), at most N candidates per class and at most
``max_error_rows`` error rows. The sample is the N rows of each class with the smallest hash of
``(key, target)``: the same rows whatever the order, partitioning or size of the run.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.parts import part_urls
from pipeline.storage import Storage

# The columns the pass reads; the extremal ones only where the part has them.
SCAN_COLUMNS = ("key", "target", "method", "error", "shard", "areas", "scores", "optimal_area", "optimal_area_reached")


@dataclass(frozen=True, order=True)
class Location:
    """Where a row lives: the part's URL, the row group and the row's index inside it."""

    part: str
    row_group: int
    row: int


def row_hash(key: str, target: int) -> int:
    """A stable 64-bit hash of a row's identity (the sample's order; not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{int(target)}".encode(), digest_size=8).digest(), "big")


@dataclass
class ClassStats:
    """One class's aggregates over its good extremal rows. ``optimal``: a* -> rows;
    ``score_sums`` / ``reached_counts``: per area, the sum of v_a and the rows with v_a >= 1."""

    rows: int = 0
    errors: int = 0
    optimal: Counter = field(default_factory=Counter)
    unreached: int = 0
    score_sums: np.ndarray | None = None
    reached_counts: np.ndarray | None = None
    scored: int = 0


@dataclass
class RunScan:
    """What the pass found. ``methods``: method -> rows (error rows included); ``classes``: the
    non-null targets only (``untargeted`` counts the rows without one); ``sample``: class ->
    [(hash, key, target, Location)] sorted by hash; ``error_rows``: the first ``max_error_rows``
    error rows (key, shard, reason) in part order; ``error_reasons``: reason -> count over every
    error row."""

    uri: str
    parts: list[str]
    methods: Counter = field(default_factory=Counter)
    rows: int = 0
    errors: int = 0
    untargeted: int = 0
    areas: tuple[float, ...] | None = None
    classes: dict[int, ClassStats] = field(default_factory=lambda: defaultdict(ClassStats))
    sample: dict[int, list[tuple[int, str, int, Location]]] = field(default_factory=dict)
    error_rows: list[tuple[str, str, str]] = field(default_factory=list)
    error_reasons: Counter = field(default_factory=Counter)

    @property
    def method(self) -> str:
        """The output's method (one per output folder, named by every row), or ``?`` without rows."""
        return self.methods.most_common(1)[0][0] if self.methods else "?"


def _list_matrix(column: pa.ChunkedArray, valid: np.ndarray) -> np.ndarray | None:
    """A list<float> column whose good rows hold A values each -> float64 ``[rows, A]`` (NaN on
    the other rows), straight from the buffers."""
    col = column.combine_chunks()
    lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    good = valid & (lengths > 0)
    if not good.any() or len(set(lengths[good].tolist())) != 1:
        return None
    width = int(lengths[good][0])
    flat = col.filter(pa.array(good)).flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    out = np.full((len(col), width), np.nan)
    out[good] = flat.reshape(-1, width)
    return out


def _add_extremal(scan: RunScan, table: pa.Table, targets: np.ndarray, good: np.ndarray) -> None:
    if "scores" not in table.column_names or not good.any():
        return
    scores = _list_matrix(table.column("scores"), good)
    if scores is None:
        return
    if scan.areas is None:
        first = table.column("areas").combine_chunks()[int(np.flatnonzero(~np.isnan(scores[:, 0]))[0])].as_py()
        scan.areas = tuple(round(float(a), 6) for a in first or [])
    scored = ~np.isnan(scores[:, 0])
    optimal = table.column("optimal_area").to_numpy(zero_copy_only=False).astype(float)
    unreached = ~table.column("optimal_area_reached").fill_null(True).to_numpy(zero_copy_only=False)
    for c in np.unique(targets[scored]):
        rows = scored & (targets == c)
        stats = scan.classes[int(c)]
        if stats.score_sums is None:
            stats.score_sums, stats.reached_counts = np.zeros(scores.shape[1]), np.zeros(scores.shape[1], np.int64)
        stats.score_sums += scores[rows].sum(axis=0)
        stats.reached_counts += (scores[rows] >= 1.0).sum(axis=0)
        stats.scored += int(rows.sum())
        stats.unreached += int((rows & unreached).sum())
        values, counts = np.unique(np.round(optimal[rows & ~np.isnan(optimal)], 6), return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist()):
            stats.optimal[v] += n


def _keep(heap: list[tuple[int, str, int, Location]], item: tuple[int, str, int, Location], n: int) -> None:
    # a max-heap of the n smallest hashes (negated): O(n) memory per class
    neg = (-item[0], item[1], item[2], item[3])
    if len(heap) < n:
        heapq.heappush(heap, neg)
    elif neg > heap[0]:
        heapq.heapreplace(heap, neg)


def scan_output(
    uri: str, per_class: int = 4, storage: Storage = Storage(), max_error_rows: int = 50
) -> RunScan:
    """Stream every part of the output at ``uri`` once (scalar columns only, one row group at a
    time) and draw ``per_class`` good rows per class. Raises FileNotFoundError without parts."""
    parts = part_urls(uri, storage)
    if not parts:
        raise FileNotFoundError(f"no Parquet parts under {uri.rstrip('/')}/parts")
    scan = RunScan(uri=uri, parts=parts)
    heaps: dict[int, list] = defaultdict(list)
    for part in parts:
        fs, path = storage.url_to_fs(part)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            columns = [c for c in SCAN_COLUMNS if c in pf.schema_arrow.names]
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg, columns=columns)
                keys = table.column("key").to_pylist()
                # A null target (an error row whose label did not fit int32) is no class: -1 only fills the array.
                has_target = table.column("target").is_valid().to_numpy(zero_copy_only=False)
                targets = table.column("target").fill_null(-1).to_numpy(zero_copy_only=False)
                errors = table.column("error").to_pylist()
                methods = table.column("method").to_pylist()
                shards = table.column("shard").to_pylist()
                good = np.array([e is None for e in errors], dtype=bool)
                scan.rows += len(keys)
                for i, err in enumerate(errors):
                    scan.methods[methods[i]] += 1  # every row names its method, error rows too
                    stats = scan.classes[int(targets[i])] if has_target[i] else None
                    if stats is None:
                        scan.untargeted += 1
                    else:
                        stats.rows += 1
                    if err is not None:
                        if stats is not None:
                            stats.errors += 1
                        scan.errors += 1
                        scan.error_reasons[err.split(":", 1)[0][:200]] += 1
                        if len(scan.error_rows) < max_error_rows:
                            scan.error_rows.append((keys[i], shards[i] or "", err))
                        continue
                    _keep(heaps[int(targets[i])], (row_hash(keys[i], targets[i]), keys[i], int(targets[i]),
                                                   Location(part, rg, i)), per_class)
                _add_extremal(scan, table, targets, good)
    scan.sample = {c: sorted((-h, k, t, loc) for h, k, t, loc in heap) for c, heap in sorted(heaps.items())}
    return scan


def locate_rows(
    uri: str, wanted: set[tuple[str, str, int]], storage: Storage = Storage()
) -> dict[tuple[str, str, int], Location]:
    """Where the good rows with these ``(shard, key, target)`` triples are in another output (the
    method comparison): a sample is its shard and key (one key may be in two shards). Reads the
    ``shard``, ``key``, ``target`` and ``error`` columns only, one row group at a time."""
    found: dict[tuple[str, str, int], Location] = {}
    names = ("shard", "key", "target", "error")
    for part in part_urls(uri, storage):
        fs, path = storage.url_to_fs(part)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg, columns=list(names))
                for i, (s, k, t, e) in enumerate(zip(*(table.column(c).to_pylist() for c in names))):
                    if e is None and (s, k, t) in wanted:
                        found.setdefault((s, k, t), Location(part, rg, i))
    return found


def read_rows(locations: list[Location], storage: Storage = Storage()) -> list[dict[str, Any]]:
    """The rows at ``locations`` as dicts (every column), in the order given. Reads only the row
    groups that hold them, one at a time, and converts only the drawn rows to Python."""
    by_group: dict[tuple[str, int], list[int]] = defaultdict(list)
    for loc in locations:
        by_group[(loc.part, loc.row_group)].append(loc.row)
    rows: dict[Location, dict[str, Any]] = {}
    for (part, rg), indices in sorted(by_group.items()):
        fs, path = storage.url_to_fs(part)
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(rg)
        taken = table.take(pa.array(indices, pa.int64()))
        for i, row in zip(indices, taken.to_pylist()):
            rows[Location(part, rg, i)] = row
        del table, taken
    return [rows[loc] for loc in locations]
