"""The per-shard template every task follows, in the spirit of Ray Data's ``Datasink.write(blocks,
ctx)``: a task is built once per worker (``task_class(cfg, device)``: model loaded, method
prepared), then ``run(shard_url, ctx)`` streams the shard's decoded samples (read ahead in a
background thread, ``pipeline.readahead``), computes under the worker's compute lock, and commits
the part with its done-marker. A subclass writes only ``compute``: the items of one shard -> the
part's table (attribution, channels and randomized models in ``pipeline.tasks`` and its
subclasses; deletion / insertion in ``pipeline.evaluation.deletion_task``).

Failure policy: a bad *sample* becomes an error row (the subclass's business); a bad *shard*
(missing, unreadable, truncated: ``ShardReadError``) raises out of ``run``, so the driver retries it
and eventually quarantines it. Nothing of a failed shard is committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from pipeline.commit import commit_part
from pipeline.config import JobConfig
from pipeline.config_hash import config_hash
from pipeline.lease import LeaseToken
from pipeline.models import LoadedModel
from pipeline.readahead import Item, Prefetcher, read_items
from pipeline.storage import Storage
from pipeline.tables import sample_reader


@dataclass
class ShardContext:
    """What the worker hands a task with each shard: ``attempt`` (from 1, recorded in the marker),
    ``storage`` (``pipeline.storage.Storage``; None: from the job's config, filled in by ``run``), ``lease`` (the
    job's hold on the output, checked before the commit; None outside a driver's job), ``lock``
    (held while the shard computes, so an actor with several shards in flight reads ahead but runs
    one at a time), ``stats`` (more fields for the done-marker: where the shard ran)."""

    attempt: int = 1
    storage: Storage | None = None
    lease: LeaseToken | None = None
    lock: threading.Lock | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class ShardTask:
    """The template: a subclass sets up ``cfg``, ``device`` and ``loaded`` with ``setup`` in its
    constructor and writes ``compute``. ``evaluation``: the settings of a task whose rows depend on
    more than the config (a deletion step, inversion settings, a randomization stage), hashed with
    it into ``output_hash``, the hash every done-marker carries: computed here, once per task."""

    name: str  # what the worker reports as loaded (the model's name)

    def setup(
        self, cfg: JobConfig, device: torch.device | str, loaded: LoadedModel, evaluation: Mapping[str, Any] | None = None
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.loaded = loaded
        self.name = loaded.name
        self.output_hash = config_hash(cfg, loaded.weights_digest, evaluation)

    def compute(self, shard_url: str, items: Iterator[Item], ctx: ShardContext) -> tuple[pa.Table, int]:
        """The part of one shard from its items (in the shard's order; each one is a decoded
        image or an error) and the number of samples it used. Runs under the compute lock."""
        raise NotImplementedError

    def run(self, shard_url: str, ctx: ShardContext | None = None) -> dict[str, Any]:
        """Compute one shard and commit its part; returns the done-marker (``shard``, ``rows``,
        ``errors``, ``images``, ``seconds`` busy, ``wait_seconds`` for the lock, ``attempts``,
        ``config_hash``...). Raises ShardReadError when the shard cannot be read to its end."""
        start = time.perf_counter()
        cfg = self.cfg
        ctx = ctx if ctx is not None else ShardContext()
        if ctx.storage is None:
            ctx = dataclasses.replace(ctx, storage=Storage.from_config(cfg))
        reader = sample_reader(cfg.input, cfg.targets.reads_labels)
        source = read_items(shard_url, self.loaded.preprocess, storage=ctx.storage,
                            max_pixels=cfg.input.max_pixels, reader=reader)
        with Prefetcher(source, maxsize=cfg.worker.prefetch) as items:
            # Reading starts before the lock: while another shard computes, this one reads ahead.
            # The lock is held for the whole shard (not per batch) so shards finish one by one.
            waited = time.perf_counter()
            with ctx.lock if ctx.lock is not None else contextlib.nullcontext():
                waited = time.perf_counter() - waited
                table, images = self.compute(shard_url, iter(items), ctx)
        stats = {
            "attempts": ctx.attempt,
            "images": images,
            "seconds": round(time.perf_counter() - start - waited, 3),  # busy time, not the wait
            "wait_seconds": round(waited, 3),
            "config_hash": self.output_hash,
            "model": self.loaded.name,
            "device": str(self.device),
            "host": socket.gethostname(),
            **ctx.stats,
        }
        return commit_part(cfg.output.uri, shard_url, table, stats, ctx.storage, ctx.lease)

