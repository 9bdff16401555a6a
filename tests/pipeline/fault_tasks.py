"""Fault injection for the driver's tests: the attribution task with a fault after the first
batch of a shard (before anything is committed). The product has no hook for it: the fault wraps
the items the template hands ``compute``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.readahead import Item
from pipeline.shard_task import ShardContext
from pipeline.tasks import AttributionTask


class FaultyTask(AttributionTask):
    """``fault(shard_url, attempt)``: None, ``"kill"`` (the actor's process exits) or ``"raise"``
    (a transient error), injected once the shard's first batch has been explained."""

    def fault(self, shard_url: str, attempt: int) -> str | None:
        return None

    def compute(self, shard_url: str, items: Iterator[Item], ctx: ShardContext):
        fault = self.fault(shard_url, ctx.attempt)
        if fault is not None:
            items = _after_first_batch(items, self.cfg.worker.batch_size, fault)
        return super().compute(shard_url, items, ctx)


def _after_first_batch(items: Iterator[Item], batch_size: int, fault: str) -> Iterator[Item]:
    """``items``, with ``fault`` when the item after the first batch is asked for (or the end)."""
    for i, item in enumerate(items):
        if i == batch_size:
            break
        yield item
    if fault == "kill":
        os._exit(1)
    raise RuntimeError("injected transient fault")


class NoRoomTask(FaultyTask):
    """The first actor dies on its first shard, and no actor started after that ever becomes
    ready (its construction blocks), as a replacement the cluster has no room for never starts.
    ``flag``: a file path marking the death (bind it with ``functools.partial``)."""

    def __init__(self, cfg, device, flag: str) -> None:
        while os.path.exists(flag):
            time.sleep(1.0)  # until the driver gives up and kills this actor
        super().__init__(cfg, device)
        self.flag = flag

    def fault(self, shard_url: str, attempt: int) -> str | None:
        if os.path.exists(self.flag):
            return None
        Path(self.flag).touch()
        return "kill"
