"""Tasks: what a worker does to one shard. A task is built once per worker (model, method) and
then run on one shard per call, committing that shard's part and returning its done-marker; the
worker and the driver know nothing else about it, so other per-shard jobs (deletion/insertion,
feature inversion) are other task classes.

``AttributionTask`` explains every image of a shard with the job's method: ``process_shard`` is
that work as a plain function (testable without Ray): it streams the shard itself through fsspec
(no image passes through the driver), reads ahead in a background thread, batches images across
the shard, picks the targets, runs the method and commits the part with its done-marker.

Failure policy: a bad *sample* (undecodable image, no image, bad label) becomes an error row; a bad
*shard* (missing, unreadable, truncated: ``ShardReadError``) raises, so the driver retries it and
eventually quarantines it. Nothing of a failed shard is committed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from extremal_core.methods import Explainer
from extremal_core.rewards import class_scores
from pipeline.commit import commit_part
from pipeline.config import JobConfig, storage_options
from pipeline.config_hash import config_hash
from pipeline.lease import LeaseToken
from pipeline.method import build_explainer, explain_in_chunks, maps_per_row, method_columns
from pipeline.models import LoadedModel, Preprocess, load_model
from pipeline.readahead import Item, Prefetcher, read_items
from pipeline.schema import rows_to_table
from pipeline.storage import redact_url
from pipeline.targets import Target, pick_targets


class ShardTask(Protocol):
    """What a worker runs: built as ``task_class(cfg, device)`` once per worker."""

    name: str  # what the worker reports as loaded (the model's name)

    def run(
        self,
        shard_url: str,
        *,
        attempt: int,
        storage: dict[str, Any],
        on_batch: Callable[[int], None] | None,
        extra_stats: dict[str, Any],
        compute_lock: threading.Lock,
        lease: LeaseToken | None = None,
    ) -> dict[str, Any]:
        """Process one shard, commit its part and return its done-marker (checking ``lease``, the
        job's hold on the output, before committing)."""
        ...


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


def _error_row(item: Item, base: dict[str, Any], error: str, target: Target | None = None) -> dict[str, Any]:
    return {
        **base,
        "key": item.key,
        "target": None if target is None else target.target,
        "target_source": None if target is None else target.source,
        "width": item.width,
        "height": item.height,
        "error": error,
    }


def explain_items(
    items: list[Item],
    cfg: JobConfig,
    loaded: LoadedModel,
    explainer: Explainer,
    device: torch.device,
    base: dict[str, Any],
) -> list[tuple[int, int, dict[str, Any]]]:
    """Rows for a batch of decoded items: ``(item index, target rank, row)``.

    Items of one input shape run together (they all do when preprocessing crops); each image's
    targets come from one clean forward pass, and the (image, target) pairs go to the method's
    ``explain`` in chunks of ``worker.batch_size``.
    """
    out: list[tuple[int, int, dict[str, Any]]] = []
    by_shape: dict[tuple[int, ...], list[Item]] = {}
    for item in items:
        by_shape.setdefault(tuple(item.x.shape), []).append(item)
    for group in by_shape.values():
        x = torch.stack([it.x for it in group]).to(device)  # [B, 3, h, w]
        with torch.no_grad():
            scores = class_scores(loaded.model(x))  # [B, C]
        picked = pick_targets(scores, [it.label for it in group], cfg.targets.mode, cfg.targets.k,
                              [it.labels for it in group])
        jobs: list[tuple[int, int, Target]] = []  # (position in group, rank, target)
        for pos, (item, targets) in enumerate(zip(group, picked)):
            for rank, t in enumerate(targets):
                if t.error is not None:
                    out.append((item.index, rank, _error_row(item, base, t.error, t)))
                else:
                    jobs.append((pos, rank, t))
        if not jobs:
            continue
        idx = torch.tensor([pos for pos, _, _ in jobs], device=device)
        targets = torch.tensor([t.target for _, _, t in jobs], dtype=torch.long, device=device)
        # Chunks of worker.batch_size rows, halved on a CUDA out-of-memory error.
        for (pos, rank, t), values in zip(jobs, explain_in_chunks(explainer, x[idx], targets, cfg.worker.batch_size)):
            item = group[pos]
            row = {
                **base,
                "key": item.key,
                "target": t.target,
                "target_source": t.source,
                "width": item.width,
                "height": item.height,
                **values,
                **item.geometry.columns(),
                "error": None,
            }
            out.append((item.index, rank, row))
    return out


# ------------------------------------------------------------------------------------------------
# One shard
# ------------------------------------------------------------------------------------------------


def map_shape(preprocess: Preprocess, explainer: Explainer, rows: list[dict[str, Any]]) -> tuple[int, int, int] | None:
    """``[M, crop, crop]`` when preprocessing crops (every row's maps have that shape), else None
    (flat lists). M from the explainer, else from this shard's first good row."""
    crop = preprocess.crop
    m = maps_per_row(explainer)
    if m is None:
        m = next((len(r["maps"]) for r in rows if r.get("maps") is not None), None)
    return None if crop is None or m is None else (m, crop, crop)


def process_shard(
    shard_url: str,
    cfg: JobConfig,
    loaded: LoadedModel,
    *,
    explainer: Explainer | None = None,
    device: torch.device | str = "cpu",
    attempt: int = 1,
    storage: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    extra_stats: dict[str, Any] | None = None,
    compute_lock: threading.Lock | None = None,
    lease: LeaseToken | None = None,
) -> dict[str, Any]:
    """Explain every sample of one shard and commit its part; returns the done-marker (small:
    ``shard``, ``rows``, ``errors``, ``images``, ``seconds``, ``attempts``, ``config_hash``...).

    ``explainer``: the job's method prepared for ``loaded.model`` (an actor builds it once; by
    default it is built here). ``storage``: fsspec options for ``s3://`` URLs (default: from ``cfg.storage``). ``on_batch``:
    called with the number of images done after each batch (progress, fault injection).
    ``extra_stats``: more fields for the marker (where the shard ran). ``compute_lock``: held
    while this shard computes, so concurrent calls (an actor with several shards in flight) read
    ahead but run the engine one shard at a time. ``lease``: the job's hold on the output, checked
    before the part and the marker are written (``pipeline.commit.commit_part``).
    Raises ShardReadError when the shard cannot be read to its end; nothing is committed then.
    """
    start = time.perf_counter()
    device = torch.device(device)
    storage = storage_options(cfg) if storage is None else storage
    explainer = build_explainer(cfg, loaded.model) if explainer is None else explainer
    base = {"shard": redact_url(shard_url), "model": loaded.name, **method_columns(cfg, explainer)}
    rows: list[tuple[int, int, dict[str, Any]]] = []
    batch: list[Item] = []
    images = 0

    def flush() -> None:
        nonlocal batch
        if batch:
            rows.extend(explain_items(batch, cfg, loaded, explainer, device, base))
            batch = []
            if on_batch is not None:
                on_batch(images)

    label_key = cfg.input.label_key if cfg.targets.reads_labels else None
    source = read_items(shard_url, loaded.preprocess, label_key, storage, cfg.input.max_pixels)
    with Prefetcher(source, maxsize=cfg.worker.prefetch) as items:
        # Reading starts before the lock: while another shard computes, this one reads ahead.
        # The lock is held for the whole shard (not per batch) so shards finish one by one.
        waited = time.perf_counter()
        with compute_lock if compute_lock is not None else contextlib.nullcontext():
            waited = time.perf_counter() - waited
            for item in items:
                images += 1
                if item.error is not None:
                    rows.append((item.index, 0, _error_row(item, base, item.error)))
                    continue
                batch.append(item)
                if len(batch) >= cfg.worker.batch_size:
                    flush()
            flush()

    rows.sort(key=lambda r: (r[0], r[1]))
    ordered = [r for _, _, r in rows]
    table = rows_to_table(ordered, cfg.output.map_format, map_shape(loaded.preprocess, explainer, ordered))
    stats = {
        "attempts": attempt,
        "images": images,
        "seconds": round(time.perf_counter() - start - waited, 3),  # busy time, not the wait
        "wait_seconds": round(waited, 3),
        "model": loaded.name,
        "device": str(device),
        "host": socket.gethostname(),
        **dict(extra_stats or {}),
    }
    if "config_hash" not in stats:  # a task passes its own, computed once (a long shard list costs to hash)
        stats["config_hash"] = config_hash(cfg, loaded.weights_digest)
    return commit_part(cfg.output.uri, shard_url, table, stats, storage, lease)


class AttributionTask:
    """The attribution job's task: loads the model on ``device`` and prepares the job's method
    once (the method's private model copy and batch bounds), then ``run`` = ``process_shard``.
    ``marker_hash``: set by a subclass whose output is guarded by another hash than the config's
    (``run_job(..., evaluation=...)``: the config plus the subclass's own settings)."""

    marker_hash: str | None = None

    def __init__(self, cfg: JobConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.loaded = load_model(cfg.model, device)
        self.explainer = build_explainer(cfg, self.loaded.model)
        self.name = self.loaded.name
        if self.marker_hash is None:
            self.marker_hash = config_hash(cfg, self.loaded.weights_digest)

    def run(
        self,
        shard_url: str,
        *,
        attempt: int = 1,
        storage: dict[str, Any] | None = None,
        on_batch: Callable[[int], None] | None = None,
        extra_stats: dict[str, Any] | None = None,
        compute_lock: threading.Lock | None = None,
        lease: LeaseToken | None = None,
    ) -> dict[str, Any]:
        if self.marker_hash is not None:
            extra_stats = {**dict(extra_stats or {}), "config_hash": self.marker_hash}
        return process_shard(
            shard_url, self.cfg, self.loaded, explainer=self.explainer, device=self.device, attempt=attempt,
            storage=storage, on_batch=on_batch, extra_stats=extra_stats, compute_lock=compute_lock, lease=lease,
        )
