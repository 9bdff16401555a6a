"""The pointing game at scale: one task per Parquet part of an attribution job (a per-part Ray
task map, or in process), each streaming its part by record batches (bounded memory: never a
whole table) against its shard's annotations, returning small per-class tallies that are summed.

Every row with a ground truth counts for the row's method and, on the same pair, for the
``center`` baseline (the point (W/2, H/2); a job run with the ``center`` *map* method is reported
as ``center (maps)``). Rows with ``error`` set, keys without annotations and pairs without ground
truth (``pipeline.evaluation.ground_truth``) are counted apart, not scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.evaluation.difficult import in_difficult_subset, load_flags
from pipeline.evaluation.ground_truth import class_mask, image_name, image_size
from pipeline.evaluation.pointing_game import SMOOTH_BY_METHOD, TOLERANCE, Tally, center_point, is_hit, saliency_point
from pipeline.geometry import Geometry
from pipeline.results import part_urls, row_stored_maps
from pipeline.schema import restore_maps
from pipeline.shards import iter_samples
from pipeline.storage import url_to_fs

SUBSETS = ("all", "difficult")
_COLUMNS = ["key", "shard", "method", "target", "width", "height", "maps", "map_min", "map_max", "map_height",
            "map_width", "resized_width", "resized_height", "crop_top", "crop_left", "error"]


@dataclass
class PartResult:
    """Tallies per (method, subset) and the rows not scored, of one part or summed over parts."""

    tallies: dict[tuple[str, str], Tally] = field(default_factory=dict)
    rows: int = 0
    errors: int = 0
    unannotated: int = 0
    no_ground_truth: int = 0

    def tally(self, method: str, subset: str) -> Tally:
        return self.tallies.setdefault((method, subset), Tally())

    def merge(self, other: PartResult) -> PartResult:
        for k, t in other.tallies.items():
            self.tally(*k).merge(t)
        self.rows += other.rows
        self.errors += other.errors
        self.unannotated += other.unannotated
        self.no_ground_truth += other.no_ground_truth
        return self


def _batch_maps(column: pa.Array) -> list[np.ndarray | None] | None:
    """Each row's uint8 maps straight from the column's buffers (no Python lists of pixels):
    ``[M, h, w]`` from a tensor column, flat from a ``list<uint8>`` column; None for PNGs (decoded
    per row). ``.values`` ignores a slice's offset, so the offsets below are absolute."""
    typ = column.type
    if isinstance(typ, pa.FixedShapeTensorType):
        shape = tuple(typ.shape)
        size = int(np.prod(shape))
        storage = column.storage
        flat = storage.values.to_numpy(zero_copy_only=False)[storage.offset * size : (storage.offset + len(column)) * size]
        arr = flat.reshape(len(column), *shape)
        valid = storage.is_valid().to_numpy(zero_copy_only=False)
        return [arr[i] if valid[i] else None for i in range(len(column))]
    if pa.types.is_list(typ) and pa.types.is_uint8(typ.value_type):
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(column))]
    return None


def shard_annotations(shard_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """key -> the sample's json of one shard (its annotations). A key repeated in the shard keeps
    its first sample's json: the job's row for that key is the first sample's (the repeat is an
    error row), so the repeat's annotations must never score it."""
    found: dict[str, dict[str, Any]] = {}
    for s in iter_samples(shard_url, storage_options):
        found.setdefault(s.key, s.meta)
    return {k: meta for k, meta in found.items() if meta}


def evaluate_part(
    part_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    tolerance: float = TOLERANCE,
    smooth: float | None = None,
    flags_path: str | None = None,
    batch_rows: int = 32,
) -> PartResult:
    """The pointing game on one part: ``smooth`` None = per method (``SMOOTH_BY_METHOD``, else 0);
    ``flags_path``: the difficult flags file (default: TorchRay's for the data's format)."""
    result = PartResult()
    annotations: dict[str, dict[str, dict[str, Any]]] = {}  # shard -> key -> meta (a part has one shard)
    fs, path = url_to_fs(part_url, storage_options)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        columns = [c for c in _COLUMNS if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            maps = _batch_maps(batch.column("maps"))
            plain = batch.drop_columns(["maps"]).to_pylist() if maps is not None else batch.to_pylist()
            for i, row in enumerate(plain):
                result.rows += 1
                if row["error"] is not None:
                    result.errors += 1
                    continue
                if row["shard"] not in annotations:
                    annotations.clear()  # keep one shard's annotations at a time
                    annotations[row["shard"]] = shard_annotations(row["shard"], storage_options)
                meta = annotations[row["shard"]].get(row["key"])
                if meta is None:
                    result.unannotated += 1
                    continue
                width, height = image_size(meta, row["width"], row["height"])
                target = int(row["target"])
                mask = class_mask(meta, target, width, height)
                if mask is None:
                    result.no_ground_truth += 1
                    continue
                if maps is None:
                    stored = row_stored_maps(row)
                else:
                    stored = maps[i].reshape(-1, row["map_height"], row["map_width"])
                values = restore_maps(stored, row["map_min"], row["map_max"])
                method = row["method"]
                s = SMOOTH_BY_METHOD.get(method, 0.0) if smooth is None else smooth
                point = saliency_point(values, Geometry.from_row(row), s, width, height)
                # The job's method (its `center` map method renamed: the baseline row is `center`).
                name = "center (maps)" if method == "center" else method
                hits = {name: is_hit(mask, point, tolerance), "center": is_hit(mask, center_point(width, height), tolerance)}
                flags = load_flags(meta.get("format"), flags_path)
                difficult = flags is not None and in_difficult_subset(flags, image_name(meta, row["key"]), target)
                for name, hit in hits.items():
                    result.tally(name, "all").add(target, hit)
                    if difficult:
                        result.tally(name, "difficult").add(target, hit)
    return result


def run_pointing_game(
    results_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    use_ray: bool = True,
    max_in_flight: int = 16,
    on_part: Callable[[int, int], None] | None = None,
    **options: Any,
) -> PartResult:
    """The pointing game over every part under ``results_uri``: one Ray task per part (at most
    ``max_in_flight`` at once, on the Ray instance the caller connected), or in this process with
    ``use_ray=False``. ``options``: ``evaluate_part``'s. ``on_part(done, total)`` after each part.
    Raises FileNotFoundError when there is no part."""
    parts = part_urls(results_uri, storage_options)
    if not parts:
        raise FileNotFoundError(f"no Parquet parts under {results_uri.rstrip('/')}/parts")
    total = PartResult()
    done = 0
    if not use_ray:
        for url in parts:
            total.merge(evaluate_part(url, storage_options, **options))
            done += 1
            if on_part is not None:
                on_part(done, len(parts))
        return total
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(evaluate_part)
    pending: list[Any] = []
    queue = list(parts)
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            pending.append(remote.remote(queue.pop(0), storage_options, **options))
        ready, pending = ray.wait(pending, num_returns=1)
        total.merge(ray.get(ready[0]))
        done += 1
        if on_part is not None:
            on_part(done, len(parts))
    return total
