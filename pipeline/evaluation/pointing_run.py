"""The pointing game at scale: one task per Parquet part of an attribution job (a per-part Ray
task map, or in process), each streaming its part by record batches (bounded memory: never a
whole table) against its shard's annotations, returning small per-class tallies that are summed.

Every row with a ground truth counts for the row's method (its hit, and its energy share:
``pipeline.metrics.energy_pointing``) and, on the same pair, for the
``center`` baseline (the point (W/2, H/2); a job run with the ``center`` *map* method is reported
as ``center (maps)``). Rows with ``error`` set, keys without annotations and pairs without ground
truth (``pipeline.metrics.ground_truth``) are counted apart, not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.evaluation.difficult import in_difficult_subset, load_flags
from pipeline.geometry import Geometry
from pipeline.io.parts import ShardLocator, iter_part_rows, part_urls
from pipeline.method import card_for
from pipeline.metrics.energy_pointing import EnergyTally, energy_share
from pipeline.metrics.ground_truth import class_mask, image_name, image_size
from pipeline.metrics.pointing_game import TOLERANCE, Tally, argmax_point, center_point, is_hit, resize_to_original
from pipeline.schema import restore_maps
from pipeline.shards import iter_samples
from pipeline.storage import Storage

SUBSETS = ("all", "difficult")
_COLUMNS = ["key", "shard", "method", "target", "width", "height", "maps", "map_min", "map_max", "map_height",
            "map_width", "resized_width", "resized_height", "crop_top", "crop_left", "error"]


@dataclass
class PartResult:
    """Tallies per (method, subset) and the rows not scored, of one part or summed over parts."""

    tallies: dict[tuple[str, str], Tally] = field(default_factory=dict)
    energies: dict[tuple[str, str], EnergyTally] = field(default_factory=dict)
    rows: int = 0
    errors: int = 0
    unannotated: int = 0
    no_ground_truth: int = 0

    def tally(self, method: str, subset: str) -> Tally:
        return self.tallies.setdefault((method, subset), Tally())

    def energy(self, method: str, subset: str) -> EnergyTally:
        return self.energies.setdefault((method, subset), EnergyTally())

    def merge(self, other: PartResult) -> PartResult:
        for k, t in other.tallies.items():
            self.tally(*k).merge(t)
        for k, e in other.energies.items():
            self.energy(*k).merge(e)
        self.rows += other.rows
        self.errors += other.errors
        self.unannotated += other.unannotated
        self.no_ground_truth += other.no_ground_truth
        return self


def shard_annotations(shard_url: str, storage: Storage = Storage()) -> dict[str, dict[str, Any]]:
    """key -> the sample's json of one shard (its annotations). A key repeated in the shard keeps
    its first sample's json: the job's row for that key is the first sample's (the repeat is an
    error row), so the repeat's annotations must never score it."""
    found: dict[str, dict[str, Any]] = {}
    for s in iter_samples(shard_url, storage):
        found.setdefault(s.key, s.meta)
    return {k: meta for k, meta in found.items() if meta}


def evaluate_part(
    part_url: str,
    storage: Storage = Storage(),
    *,
    tolerance: float = TOLERANCE,
    smooth: float | None = None,
    flags_path: str | None = None,
    batch_rows: int = 32,
    shards: Sequence[str] = (),
) -> PartResult:
    """The pointing game on one part: ``smooth`` None = per method (its card's ``smooth``), else
    that fraction with the card's side and padding rule (shorter side, zeros when it has none);
    ``flags_path``: the difficult flags file (default: TorchRay's for the data's format);
    ``shards``: the shards' real URLs (a signed URL's query string is redacted in the part)."""
    result = PartResult()
    annotations: dict[str, dict[str, dict[str, Any]]] = {}  # shard -> key -> meta (a part has one shard)
    locate = ShardLocator(shards)
    for row in iter_part_rows(part_url, storage, _COLUMNS, batch_rows):
        result.rows += 1
        if row["error"] is not None:
            result.errors += 1
            continue
        if row["shard"] not in annotations:
            annotations.clear()  # keep one shard's annotations at a time
            annotations[row["shard"]] = shard_annotations(locate(row["shard"]), storage)
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
        values = restore_maps(row["stored"], row["map_min"], row["map_max"])
        method = row["method"]
        s = card_for(method).smooth if smooth is None else replace(card_for(method).smooth, fraction=smooth)
        full = resize_to_original(values, Geometry.from_row(row), width, height)
        point = argmax_point(full, s)
        share = energy_share(full, mask)
        # The job's method (its `center` map method renamed: the baseline row is `center`).
        name = "center (maps)" if method == "center" else method
        hits = {name: is_hit(mask, point, tolerance), "center": is_hit(mask, center_point(width, height), tolerance)}
        flags = load_flags(meta.get("format"), flags_path)
        difficult = flags is not None and in_difficult_subset(flags, image_name(meta, row["key"]), target)
        for subset in ("all", "difficult") if difficult else ("all",):
            for scored, hit in hits.items():
                result.tally(scored, subset).add(target, hit)
            result.energy(name, subset).add(target, share)  # the center baseline has no map
    return result


def run_pointing_game(
    results_uri: str,
    storage: Storage = Storage(),
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
    parts = part_urls(results_uri, storage)
    if not parts:
        raise FileNotFoundError(f"no Parquet parts under {results_uri.rstrip('/')}/parts")
    total = PartResult()
    done = 0
    if not use_ray:
        for url in parts:
            total.merge(evaluate_part(url, storage, **options))
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
            pending.append(remote.remote(queue.pop(0), storage, **options))
        ready, pending = ray.wait(pending, num_returns=1)
        total.merge(ray.get(ready[0]))
        done += 1
        if on_part is not None:
            on_part(done, len(parts))
    return total
