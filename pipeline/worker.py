"""The worker: a Ray actor (a plain class the driver wraps with ``ray.remote``, so it also runs
in-process) that builds its task once (``pipeline.tasks``: model loaded, method prepared) and then
runs it on one shard per call. It owns what is the same for every task: the device, the torch
threads, the storage and the compute lock that lets the next shard read ahead while the
current one computes, handed to the task in a ``ShardContext`` (``pipeline.shard_task``).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import torch

from pipeline.config import JobConfig
from pipeline.lease import LeaseToken
from pipeline.shard_task import ShardContext, ShardTask
from pipeline.storage import Storage
from pipeline.tasks import AttributionTask


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


class ShardWorker:
    """One per GPU (or per CPU slot): builds its task once, then ``process`` runs it on one shard
    per call. The driver wraps it with ``ray.remote``; it is a plain class, so it also runs
    in-process. ``task_class``: what to do to a shard (``pipeline.tasks``), built as
    ``task_class(cfg, device)``. ``lease``: the job's hold on the output (``pipeline.lease``),
    handed to the task, which checks it before committing; None outside a driver's job."""

    def __init__(self, cfg: JobConfig, task_class: type = AttributionTask, lease: LeaseToken | None = None) -> None:
        self.cfg = cfg
        self.lease = lease
        self.device = resolve_device(cfg.cluster.device)
        if self.device.type == "cpu":
            # Ray sets OMP_NUM_THREADS from the actor's CPUs; make torch agree (at least 1).
            torch.set_num_threads(max(1, int(cfg.cluster.num_cpus_per_actor)))
        # Once per actor, not per shard: loading the model and preparing the method dominate a
        # small shard's time.
        self.task: ShardTask = task_class(cfg, self.device)
        # The hash of what this worker loaded (model weights included) against the job's; a task
        # without a model of its own (None) has nothing to check.
        built = getattr(self.task, "output_hash", None)
        if lease is not None and built is not None and built != lease.config_hash:
            raise RuntimeError(
                f"this worker's model is not the driver's (config hash {built[:12]}, the job's {lease.config_hash[:12]}): "
                "a model.factory that builds unseeded weights, or a checkpoint changed since the job started; "
                "seed the factory or give model.checkpoint"
            )
        self.storage = Storage.from_config(cfg)
        # The driver runs this actor with max_concurrency = max_in_flight_per_actor: the next
        # shard's reader starts while the current shard computes; the lock serialises compute.
        self._compute = threading.Lock()

    def ready(self) -> dict[str, Any]:
        """Where this worker runs (returns once the task is built, i.e. the model loaded)."""
        return {"device": str(self.device), "model": self.task.name, "host": socket.gethostname(), "pid": os.getpid()}

    def process(self, shard_url: str, attempt: int = 1) -> dict[str, Any]:
        """The task on one shard; ``attempt`` counts from 1 (recorded in the marker). Returns the
        shard's done-marker."""
        # The accelerator Ray assigned (a logical GPU on a CPU-only machine still shows here).
        where = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        ctx = ShardContext(attempt=attempt, storage=self.storage, lease=self.lease, lock=self._compute, stats=where)
        return self.task.run(shard_url, ctx)
