"""The worker: one shard in, one committed Parquet part out.

``process_shard`` is the whole job of a worker as a plain function (testable without Ray): it
streams the shard itself through fsspec (no image passes through the driver), decodes and
preprocesses in a background thread feeding a bounded queue (so the engine never waits on I/O),
batches images across the shard, picks the targets, runs ``extremal_core`` and commits the part
with its done-marker. ``ShardWorker`` is the Ray actor around it: it loads the model once and
then processes one shard per call.

Failure policy: a bad *sample* (undecodable image, no image, bad label) becomes an error row; a bad
*shard* (missing, unreadable, truncated: ``ShardReadError``) raises, so the driver retries it and
eventually quarantines it. Nothing of a failed shard is committed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from extremal_core.methods import Explainer
from extremal_core.rewards import class_scores
from pipeline.config import JobConfig, storage_options
from pipeline.config_hash import config_hash
from pipeline.geometry import Geometry
from pipeline.method import build_explainer, explain_rows, maps_per_row, method_columns
from pipeline.models import LoadedModel, Preprocess, load_model
from pipeline.output import commit_part
from pipeline.schema import rows_to_table
from pipeline.shards import decode_image, iter_samples
from pipeline.targets import Target, pick_targets

# ------------------------------------------------------------------------------------------------
# Model and device
# ------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU (a Ray logical GPU on a CPU-only machine
    sets CUDA_VISIBLE_DEVICES but has no device behind it). ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"cluster.device is 'cuda' but torch sees no GPU on {socket.gethostname()} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use device: auto or cpu"
        )
    return torch.device(device)


# ------------------------------------------------------------------------------------------------
# Reading ahead
# ------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One sample, decoded and preprocessed (or with ``error`` set). ``x``: the model input
    float32 ``[3, h, w]``; ``index``: position in the shard (rows keep the shard's order)."""

    index: int
    key: str
    label: int | None = None
    x: torch.Tensor | None = None
    geometry: Geometry | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


def read_items(
    shard_url: str, preprocess: Preprocess, label_key: str = "cls", storage_options: dict[str, Any] | None = None
) -> Iterator[Item]:
    """Stream a shard's samples as ``Item``s: decode + preprocess each image; a sample that
    cannot be used gets ``error`` instead of raising. A damaged shard raises ShardReadError
    (after yielding the samples before the damage)."""
    for index, sample in enumerate(iter_samples(shard_url, storage_options, label_key)):
        item = Item(index=index, key=sample.key, label=sample.label)
        if sample.error is not None or sample.image_bytes is None:
            item.error = sample.error or "no image"
            yield item
            continue
        try:
            image = decode_image(sample.image_bytes)
            item.width, item.height = image.size
            item.x, item.geometry = preprocess(image)
        except Exception as exc:  # decode_image raises ValueError; preprocessing anything else
            item.error = " ".join(str(exc).split()) or type(exc).__name__
        yield item


class Prefetcher:
    """Run an iterator in a background thread, ``maxsize`` items ahead, and iterate its items
    here. An exception in the producer is re-raised at the consumer, in order (after the items
    produced before it). ``close()`` stops the thread even if the consumer stops early."""

    def __init__(self, source: Iterator[Any], maxsize: int = 16) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name="shard-prefetch", daemon=True)
        self._thread.start()

    def _put(self, message: tuple[str, Any]) -> bool:
        # A bounded put that gives up when the consumer has gone away (close()).
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed over to the consumer
            self._put(("error", exc))

    def __iter__(self) -> Iterator[Any]:
        while True:
            kind, value = self._queue.get()
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        picked = pick_targets(scores, [it.label for it in group], cfg.targets.mode, cfg.targets.k)
        jobs: list[tuple[int, int, Target]] = []  # (position in group, rank, target)
        for pos, (item, targets) in enumerate(zip(group, picked)):
            for rank, t in enumerate(targets):
                if t.error is not None:
                    out.append((item.index, rank, _error_row(item, base, t.error, t)))
                else:
                    jobs.append((pos, rank, t))
        bs = cfg.worker.batch_size
        for lo in range(0, len(jobs), bs):
            chunk = jobs[lo : lo + bs]
            idx = torch.tensor([pos for pos, _, _ in chunk], device=device)
            targets = torch.tensor([t.target for _, _, t in chunk], dtype=torch.long, device=device)
            for (pos, rank, t), values in zip(chunk, explain_rows(explainer, x[idx], targets)):
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
) -> dict[str, Any]:
    """Explain every sample of one shard and commit its part; returns the done-marker (small:
    ``shard``, ``rows``, ``errors``, ``images``, ``seconds``, ``attempts``, ``config_hash``...).

    ``explainer``: the job's method prepared for ``loaded.model`` (an actor builds it once; by
    default it is built here). ``storage``: fsspec options for ``s3://`` URLs (default: from ``cfg.storage``). ``on_batch``:
    called with the number of images done after each batch (progress, fault injection).
    ``extra_stats``: more fields for the marker (where the shard ran). ``compute_lock``: held
    while this shard computes, so concurrent calls (an actor with several shards in flight) read
    ahead but run the engine one shard at a time.
    Raises ShardReadError when the shard cannot be read to its end; nothing is committed then.
    """
    start = time.perf_counter()
    device = torch.device(device)
    storage = storage_options(cfg) if storage is None else storage
    explainer = build_explainer(cfg, loaded.model) if explainer is None else explainer
    base = {"shard": shard_url, "model": loaded.name, **method_columns(cfg)}
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

    source = read_items(shard_url, loaded.preprocess, cfg.input.label_key, storage)
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
        "config_hash": config_hash(cfg),
        "model": loaded.name,
        "device": str(device),
        "host": socket.gethostname(),
        **dict(extra_stats or {}),
    }
    return commit_part(cfg.output.uri, shard_url, table, stats, storage)


# ------------------------------------------------------------------------------------------------
# The actor
# ------------------------------------------------------------------------------------------------


class ShardWorker:
    """One per GPU (or per CPU slot): loads the model once, then ``process`` handles one shard
    per call. The driver wraps it with ``ray.remote``; it is a plain class, so it also runs
    in-process."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.cluster.device)
        if self.device.type == "cpu":
            # Ray sets OMP_NUM_THREADS from the actor's CPUs; make torch agree (at least 1).
            torch.set_num_threads(max(1, int(cfg.cluster.num_cpus_per_actor)))
        self.loaded = load_model(cfg.model, self.device)
        # Once per (model, method) per actor: the method's private model copy and batch bounds.
        self.explainer = build_explainer(cfg, self.loaded.model)
        self.storage = storage_options(cfg)
        # The driver runs this actor with max_concurrency = max_in_flight_per_actor: the next
        # shard's reader starts while the current shard computes; the lock serialises compute.
        self._compute = threading.Lock()

    def ready(self) -> dict[str, Any]:
        """Where this worker runs (returns once the model is loaded)."""
        return {"device": str(self.device), "model": self.loaded.name, "host": socket.gethostname(), "pid": os.getpid()}

    def process(self, shard_url: str, attempt: int = 1) -> dict[str, Any]:
        """``process_shard`` for one shard; ``attempt`` counts from 1 (recorded in the marker)."""
        # The accelerator Ray assigned (a logical GPU on a CPU-only machine still shows here).
        extra = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        return process_shard(
            shard_url, self.cfg, self.loaded, explainer=self.explainer, device=self.device, attempt=attempt,
            storage=self.storage, on_batch=self.on_batch(shard_url, attempt), extra_stats=extra,
            compute_lock=self._compute,
        )

    def on_batch(self, shard_url: str, attempt: int) -> Callable[[int], None] | None:
        """A callback after each batch of a shard (none here). A subclass can watch or interrupt
        a shard mid-way, e.g. the tests' failing worker that dies on a first attempt."""
        return None
