"""Deletion / insertion at scale: a ``ShardTask`` (``pipeline.tasks``) that, for one shard, reads
the attribution job's Parquet part of that shard in record batches, decodes the shard's images
with the attribution model's own preprocessing, and scores every good row's saliency (its M maps
summed, as the pointing game does; extremal's nested masks then order the smallest area's pixels
first) with ``pipeline.evaluation.deletion_insertion``, committing one part of AUCs and curves
per shard (``EVAL_SCHEMA``) with the usual done-marker, so the driver's retries and resume apply.

Rows and images are joined in the shard's order (attribution parts keep it, one or more rows per
image), so neither the part nor the shard is held whole: memory is one batch of rows and the
reader's prefetch queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from extremal_core.network import engine_model
from extremal_core.settings import ExtremalSettings
from pipeline.commit import commit_part, part_uri
from pipeline.config import JobConfig, storage_options
from pipeline.config_hash import config_hash
from pipeline.evaluation.deletion_insertion import SUBSTRATES, causal_curves
from pipeline.evaluation.pointing_run import _batch_maps
from pipeline.lease import LeaseToken
from pipeline.models import LoadedModel, load_model
from pipeline.readahead import Item, Prefetcher, read_items
from pipeline.results import row_stored_maps
from pipeline.schema import restore_maps
from pipeline.storage import url_to_fs

_F32, _I32 = pa.float32(), pa.int32()
EVAL_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("method", pa.string()), ("model", pa.string()),
    ("target", _I32), ("step", _I32), ("n_steps", _I32),
    ("deletion_auc", _F32), ("insertion_auc", _F32),
    ("deletion_curve", pa.list_(_F32)), ("insertion_curve", pa.list_(_F32)),
    ("deletion_substrate", pa.string()), ("error", pa.string()), ("seconds", _F32),
])
_READ = ["key", "method", "target", "maps", "map_min", "map_max", "map_height", "map_width", "error"]


@dataclass(frozen=True)
class DeletionSettings:
    """``results_uri``: the attribution job's output (its ``parts/``). ``step``: pixels per step
    (None: the input's width, SPEC's one row). ``deletion_substrate``: ``zeros`` (SPEC) or
    ``blur``; insertion always starts from the blurred image. ``forward_batch``: perturbed images
    per forward pass."""

    results_uri: str
    step: int | None = None
    deletion_substrate: str = "zeros"
    forward_batch: int | None = None

    def __post_init__(self) -> None:
        if self.step is not None and self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if self.deletion_substrate not in SUBSTRATES:
            raise ValueError(f"deletion substrate must be one of {', '.join(SUBSTRATES)}, got {self.deletion_substrate!r}")
        if self.forward_batch is not None and self.forward_batch < 1:
            raise ValueError(f"forward_batch must be >= 1, got {self.forward_batch}")

    def hashed(self) -> dict[str, Any]:
        """What changes the output rows (the results' location and the batching do not)."""
        return {"evaluation": "deletion_insertion", "step": self.step, "deletion_substrate": self.deletion_substrate}


def _rows(part_url: str, storage: dict[str, Any], batch_rows: int) -> Iterator[dict[str, Any]]:
    """The part's rows one by one, each with ``stored`` (uint8 maps ``[M, h, w]``) or None."""
    fs, path = url_to_fs(part_url, storage)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        columns = [c for c in _READ if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            maps = _batch_maps(batch.column("maps"))
            plain = batch.drop_columns(["maps"]).to_pylist() if maps is not None else batch.to_pylist()
            for i, row in enumerate(plain):
                stored = None
                if row["error"] is None:
                    if maps is None:
                        stored = row_stored_maps(row)
                    else:
                        stored = maps[i].reshape(-1, row["map_height"], row["map_width"])
                row.pop("maps", None)
                yield {**row, "stored": stored}


def _joined(rows: Iterator[dict[str, Any]], items: Iterator[Item]) -> Iterator[tuple[dict[str, Any], Item | None]]:
    """Each row with its image: both come in the shard's order, so the item iterator only moves
    forward; a row whose key is not ahead in the shard gets None."""
    current: Item | None = None
    for row in rows:
        while current is None or current.key != row["key"]:
            current = next(items, None)
            if current is None:
                break
        yield row, current


def evaluate_shard(
    shard_url: str,
    cfg: JobConfig,
    loaded: LoadedModel,
    settings: DeletionSettings,
    *,
    device: torch.device | str = "cpu",
    attempt: int = 1,
    storage: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    extra_stats: dict[str, Any] | None = None,
    compute_lock: threading.Lock | None = None,
    lease: LeaseToken | None = None,
) -> dict[str, Any]:
    """Deletion and insertion of every row of the shard's attribution part; commits the part of
    ``EVAL_SCHEMA`` rows under ``cfg.output.uri`` and returns its done-marker. ``cfg``: the
    attribution job's config (model, preprocessing, ``worker.batch_size`` rows per batch) with the
    evaluation's output. Raises ShardReadError for an unreadable shard, FileNotFoundError when
    the shard has no attribution part. ``lease``: the job's hold on the output, checked by the commit."""
    start = time.perf_counter()
    device = torch.device(device)
    storage = storage_options(cfg) if storage is None else storage
    out: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []  # (row, x [3,H,W], saliency [H,W])
    base = {"shard": shard_url, "model": loaded.name, "deletion_substrate": settings.deletion_substrate}
    images = 0

    def flush() -> None:
        t0 = time.perf_counter()
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, (_, x, _) in enumerate(pending):
            by_shape.setdefault(tuple(x.shape), []).append(j)
        for idx in by_shape.values():
            x = torch.stack([pending[j][1] for j in idx]).to(device)
            sal = torch.stack([pending[j][2] for j in idx]).to(device)
            tgt = torch.tensor([int(pending[j][0]["target"]) for j in idx], device=device)
            kw = {"step": settings.step, "forward_batch": settings.forward_batch}
            d = causal_curves(loaded.model, x, sal, tgt, "deletion", substrate=settings.deletion_substrate, **kw)
            ins = causal_curves(loaded.model, x, sal, tgt, "insertion", **kw)
            dc, ic = d.curves.cpu().numpy(), ins.curves.cpu().numpy()
            da, ia = d.auc.cpu().numpy(), ins.auc.cpu().numpy()
            seconds = (time.perf_counter() - t0) / len(pending)
            for k, j in enumerate(idx):
                pending[j][0].update(step=d.step, n_steps=dc.shape[1] - 1, deletion_auc=float(da[k]),
                                     insertion_auc=float(ia[k]), deletion_curve=dc[k].tolist(),
                                     insertion_curve=ic[k].tolist(), seconds=seconds)
        pending.clear()
        if on_batch is not None:
            on_batch(images)

    source = read_items(shard_url, loaded.preprocess, cfg.input.label_key if cfg.targets.reads_labels else None, storage)
    with Prefetcher(source, maxsize=cfg.worker.prefetch) as items:
        waited = time.perf_counter()
        with compute_lock if compute_lock is not None else contextlib.nullcontext():
            waited = time.perf_counter() - waited
            seen: set[str] = set()
            rows = _rows(part_uri(settings.results_uri, shard_url), storage, cfg.worker.batch_size)
            for row, item in _joined(rows, iter(items)):
                if item is not None and item.key not in seen:
                    seen.add(item.key)
                    images += 1
                res = {**base, "key": row["key"], "method": row.get("method"), "target": row["target"], "error": None}
                out.append(res)
                error = _row_error(row, item)
                if error is not None:
                    res["error"] = error
                    continue
                values = restore_maps(row["stored"], row["map_min"], row["map_max"])  # [M, h, w]
                pending.append((res, item.x, torch.from_numpy(values.sum(axis=0))))
                if len(pending) >= cfg.worker.batch_size:
                    flush()
            if pending:
                flush()

    table = pa.Table.from_pylist(out, schema=EVAL_SCHEMA)
    stats = {
        "attempts": attempt, "images": images, "seconds": round(time.perf_counter() - start - waited, 3),
        "wait_seconds": round(waited, 3), "model": loaded.name,
        "config_hash": config_hash(cfg, loaded.weights_digest, settings.hashed()),
        "device": str(device), "host": socket.gethostname(), **dict(extra_stats or {}),
    }
    return commit_part(cfg.output.uri, shard_url, table, stats, storage, lease)


def _row_error(row: dict[str, Any], item: Item | None) -> str | None:
    """Why a row cannot be scored, or None."""
    if row["error"] is not None:
        return f"attribution: {row['error']}"
    if item is None:
        return f"key {row['key']!r} not found in the shard (in order)"
    if item.error is not None:
        return item.error
    if row["target"] is None:
        return "no target"
    h, w = item.x.shape[1:]
    if tuple(row["stored"].shape[1:]) != (h, w):
        return f"maps {list(row['stored'].shape[1:])} do not match the model input {[h, w]}"
    return None


class DeletionInsertionTask:
    """The deletion/insertion job's task: the attribution model loaded on ``device`` once, then
    ``run`` = ``evaluate_shard``. Built as ``functools.partial(DeletionInsertionTask,
    settings=...)`` for the driver's ``task_class``."""

    def __init__(self, cfg: JobConfig, device: torch.device, settings: DeletionSettings) -> None:
        self.cfg = cfg
        self.device = device
        self.settings = settings
        loaded = load_model(cfg.model, device)
        # The engine's private copy (BatchNorm folded, channels-last): the same function, faster.
        self.loaded = dataclasses.replace(loaded, model=engine_model(loaded.model, ExtremalSettings()))
        self.name = self.loaded.name

    def run(self, shard_url: str, **shard_options: Any) -> dict[str, Any]:
        """``ShardTask.run``: its keyword arguments go to ``evaluate_shard`` as they are."""
        return evaluate_shard(shard_url, self.cfg, self.loaded, self.settings, device=self.device, **shard_options)
