"""Deletion / insertion at scale: a ``ShardTask`` (``pipeline.shard_task``) that, for one shard, reads
the attribution job's Parquet part of that shard in record batches, decodes the shard's images
with the attribution model's own preprocessing, and scores every good row's saliency (its M maps
summed, as the pointing game does; extremal's nested masks then order the smallest area's pixels
first) with ``pipeline.metrics.deletion_insertion``, committing one part of AUCs and curves
per shard (``EVAL_SCHEMA``) with the usual done-marker, so the driver's retries and resume apply.

Rows and images are joined in the shard's order (attribution parts keep it, one or more rows per
image), so neither the part nor the shard is held whole: memory is one batch of rows and the
reader's prefetch queue.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from extremal_core.network import engine_model
from extremal_core.settings import ExtremalSettings
from pipeline.commit import part_uri
from pipeline.config import JobConfig
from pipeline.io.parts import iter_part_rows
from pipeline.metrics.deletion_insertion import SUBSTRATES, causal_curves
from pipeline.metrics.road import NOISE, road_curves
from pipeline.metrics.srg import srg
from pipeline.models import LoadedModel, load_model
from pipeline.readahead import Item
from pipeline.schema import restore_maps
from pipeline.shard_task import ShardContext, ShardTask
from pipeline.storage import redact_url

_F32, _I32 = pa.float32(), pa.int32()
EVAL_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("method", pa.string()), ("model", pa.string()),
    ("target", _I32), ("step", _I32), ("n_steps", _I32),
    ("deletion_auc", _F32), ("insertion_auc", _F32), ("srg", _F32),
    ("deletion_curve", pa.list_(_F32)), ("insertion_curve", pa.list_(_F32)),
    # ROAD (pipeline.metrics.road), with ``road`` set: AUCs and curves at road.FRACTIONS.
    ("road_morf_auc", _F32), ("road_lerf_auc", _F32), ("road_morf_curve", pa.list_(_F32)),
    ("road_lerf_curve", pa.list_(_F32)),
    ("deletion_substrate", pa.string()), ("error", pa.string()), ("seconds", _F32),
])
_READ = ["key", "method", "target", "maps", "map_min", "map_max", "map_height", "map_width", "error"]


@dataclass(frozen=True)
class DeletionSettings:
    """``results_uri``: the attribution job's output (its ``parts/``). ``step``: pixels per step
    (None: the input's width, one row as in RISE). ``deletion_substrate``: ``zeros`` (RISE's) or
    ``blur``; insertion always starts from the blurred image. ``forward_batch``: perturbed images
    per forward pass. ``road``: also ROAD's MoRF and LeRF curves (noisy linear imputation, noise
    0.01 in [0, 1] pixel units)."""

    results_uri: str
    step: int | None = None
    deletion_substrate: str = "zeros"
    forward_batch: int | None = None
    road: bool = False

    def __post_init__(self) -> None:
        if self.step is not None and self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if self.deletion_substrate not in SUBSTRATES:
            raise ValueError(f"deletion substrate must be one of {', '.join(SUBSTRATES)}, got {self.deletion_substrate!r}")
        if self.forward_batch is not None and self.forward_batch < 1:
            raise ValueError(f"forward_batch must be >= 1, got {self.forward_batch}")

    def hashed(self) -> dict[str, Any]:
        """What changes the output rows (the results' location and the batching do not)."""
        out = {"evaluation": "deletion_insertion", "step": self.step, "deletion_substrate": self.deletion_substrate}
        return {**out, "road": True} if self.road else out  # earlier outputs keep their hash


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


def _road(loaded: LoadedModel, x: torch.Tensor, sal: torch.Tensor, tgt: torch.Tensor, settings: DeletionSettings,
          rows: list[dict[str, Any]]) -> None:
    """ROAD's curves of a batch into its rows; the imputation noise in the normalised input's units."""
    noise = NOISE / torch.tensor(loaded.preprocess.std, dtype=torch.float32, device=x.device)
    kw = {"noise": noise, "forward_batch": settings.forward_batch or 32}
    for order in ("morf", "lerf"):
        r = road_curves(loaded.model, x, sal, tgt, order, **kw)
        curves, aucs = r.curves.cpu().numpy(), r.auc.cpu().numpy()
        for k, row in enumerate(rows):
            row.update({f"road_{order}_auc": float(aucs[k]), f"road_{order}_curve": curves[k].tolist()})


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


class DeletionInsertionTask(ShardTask):
    """The deletion/insertion job's task (``pipeline.shard_task``'s template): the attribution
    model loaded on ``device`` once; ``compute`` scores the rows of the shard's attribution part.
    Built as ``functools.partial(DeletionInsertionTask, settings=...)`` for the driver's
    ``task_class``. ``cfg``: the attribution job's config (model, preprocessing,
    ``worker.batch_size`` rows per batch) with the evaluation's output."""

    def __init__(self, cfg: JobConfig, device: torch.device, settings: DeletionSettings) -> None:
        loaded = load_model(cfg.model, device)
        # The engine's private copy (BatchNorm folded, channels-last): the same function, faster.
        loaded = dataclasses.replace(loaded, model=engine_model(loaded.model, ExtremalSettings()))
        self.setup(cfg, device, loaded, settings.hashed())
        self.settings = settings

    def compute(self, shard_url: str, items: Iterator[Item], ctx: ShardContext) -> tuple[pa.Table, int]:
        """Deletion and insertion of every row of the shard's attribution part: ``EVAL_SCHEMA``
        rows. Raises FileNotFoundError when the shard has no attribution part."""
        cfg, settings = self.cfg, self.settings
        base = {"shard": redact_url(shard_url), "model": self.loaded.name, "deletion_substrate": settings.deletion_substrate}
        out: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = []  # (row, x [3,H,W], saliency [H,W])
        seen: set[str] = set()
        rows = iter_part_rows(part_uri(settings.results_uri, shard_url), ctx.storage, _READ, cfg.worker.batch_size)
        for row, item in _joined(rows, items):
            if item is not None and item.key not in seen:
                seen.add(item.key)
            res = {**base, "key": row["key"], "method": row.get("method"), "target": row["target"], "error": None}
            out.append(res)
            error = _row_error(row, item)
            if error is not None:
                res["error"] = error
                continue
            values = restore_maps(row["stored"], row["map_min"], row["map_max"])  # [M, h, w]
            pending.append((res, item.x, torch.from_numpy(values.sum(axis=0))))
            if len(pending) >= cfg.worker.batch_size:
                self._score(pending)
        if pending:
            self._score(pending)
        return pa.Table.from_pylist(out, schema=EVAL_SCHEMA), len(seen)

    def _score(self, pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]) -> None:
        """Fill the pending rows' curves and AUCs (rows of one input shape run together); empties ``pending``."""
        t0, settings, device, model = time.perf_counter(), self.settings, self.device, self.loaded.model
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, (_, x, _) in enumerate(pending):
            by_shape.setdefault(tuple(x.shape), []).append(j)
        for idx in by_shape.values():
            x = torch.stack([pending[j][1] for j in idx]).to(device)
            sal = torch.stack([pending[j][2] for j in idx]).to(device)
            tgt = torch.tensor([int(pending[j][0]["target"]) for j in idx], device=device)
            kw = {"step": settings.step, "forward_batch": settings.forward_batch}
            d = causal_curves(model, x, sal, tgt, "deletion", substrate=settings.deletion_substrate, **kw)
            ins = causal_curves(model, x, sal, tgt, "insertion", **kw)
            dc, ic = d.curves.cpu().numpy(), ins.curves.cpu().numpy()
            da, ia = d.auc.cpu().numpy(), ins.auc.cpu().numpy()
            # SRG needs one occluder for both orders: insertion's blur (pipeline.metrics.srg).
            gain = srg(d.curves, ins.curves).cpu().numpy() if settings.deletion_substrate == "blur" else None
            seconds = (time.perf_counter() - t0) / len(pending)
            for k, j in enumerate(idx):
                pending[j][0].update(step=d.step, n_steps=dc.shape[1] - 1, deletion_auc=float(da[k]),
                                     insertion_auc=float(ia[k]), srg=None if gain is None else float(gain[k]),
                                     deletion_curve=dc[k].tolist(),
                                     insertion_curve=ic[k].tolist(), seconds=seconds)
            if settings.road:
                _road(self.loaded, x, sal, tgt, settings, [pending[j][0] for j in idx])
        pending.clear()
