"""The attribution task: explains every image of a shard with the job's method (``pipeline.shard_task``
is the template: it streams the shard, holds the compute lock and commits). Per shard it batches
images across the shard, picks the targets from one clean forward pass, runs the method and turns
its explanations into the part's rows, a bad sample becoming an error row that names its key.
``process_shard`` runs it on one shard in this process (no Ray), with a model already loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import torch

from extremal_core.methods import Explainer
from extremal_core.rewards import class_scores
from pipeline.config import JobConfig
from pipeline.method import build_explainer, explain_in_chunks, maps_per_row, method_columns
from pipeline.models import LoadedModel, Preprocess, load_model
from pipeline.readahead import Item
from pipeline.schema import rows_to_table
from pipeline.shard_task import ShardContext, ShardTask
from pipeline.storage import redact_url
from pipeline.targets import Target, pick_targets

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
        chunks = explain_in_chunks(explainer, x[idx], targets, cfg.worker.batch_size, cfg.method.card)
        for (pos, rank, t), values in zip(jobs, chunks):
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


class AttributionTask(ShardTask):
    """The attribution job's task: loads the model on ``device`` and prepares the job's method
    once (the method's private model copy and batch bounds); ``compute`` explains a shard.
    ``evaluation``: for a subclass whose rows depend on more than the config (hashed with it)."""

    def __init__(self, cfg: JobConfig, device: torch.device, evaluation: Mapping[str, Any] | None = None) -> None:
        self.setup(cfg, device, load_model(cfg.model, device), evaluation)
        self.explainer = build_explainer(cfg, self.loaded.model)

    @classmethod
    def from_loaded(cls, cfg: JobConfig, loaded: LoadedModel, device: torch.device | str = "cpu",
                    explainer: Explainer | None = None) -> AttributionTask:
        """The task around a model already loaded (and, optionally, an explainer already prepared)."""
        task = cls.__new__(cls)
        task.setup(cfg, device, loaded)
        task.explainer = build_explainer(cfg, loaded.model) if explainer is None else explainer
        return task

    def compute(self, shard_url: str, items: Iterator[Item], ctx: ShardContext) -> tuple[pa.Table, int]:
        cfg, loaded, explainer = self.cfg, self.loaded, self.explainer
        base = {"shard": redact_url(shard_url), "model": loaded.name, **method_columns(cfg, explainer)}
        rows: list[tuple[int, int, dict[str, Any]]] = []
        batch: list[Item] = []
        images = 0
        for item in items:
            images += 1
            if item.error is not None:
                rows.append((item.index, 0, _error_row(item, base, item.error)))
                continue
            batch.append(item)
            if len(batch) >= cfg.worker.batch_size:
                rows.extend(explain_items(batch, cfg, loaded, explainer, self.device, base))
                batch = []
        if batch:
            rows.extend(explain_items(batch, cfg, loaded, explainer, self.device, base))
        rows.sort(key=lambda r: (r[0], r[1]))
        ordered = [r for _, _, r in rows]
        shape = map_shape(loaded.preprocess, explainer, ordered)
        return rows_to_table(ordered, cfg.output.map_format, shape, cfg.method.card), images


def process_shard(
    shard_url: str, cfg: JobConfig, loaded: LoadedModel, *, explainer: Explainer | None = None,
    device: torch.device | str = "cpu", ctx: ShardContext | None = None,
) -> dict[str, Any]:
    """Explain every sample of one shard with ``loaded`` and commit its part, in this process;
    returns the done-marker. ``explainer``: the job's method already prepared (default: built here)."""
    return AttributionTask.from_loaded(cfg, loaded, device, explainer).run(shard_url, ctx)
