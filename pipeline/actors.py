"""The driver's actor seats: an actor started per seat, replaced when its process dies, and the
seat given up when a replacement does not start in time (the cluster lost the capacity to host
it, e.g. with a node): the job goes on with the other seats, or stops when none is left."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.config import JobConfig
from pipeline.lease import LeaseToken


@dataclass
class Slot:
    """An actor seat: the current handle (None: given up) and its generation (bumped on every
    replacement, so late failures of a dead actor's queued shards do not replace its successor).
    ``starting``: a replacement's ``ready()`` call until it has answered, since ``since``."""

    handle: Any
    generation: int = 0
    starting: Any = None
    since: float = field(default_factory=time.monotonic)

    @classmethod
    def replacement(cls, handle: Any, generation: int) -> Slot:
        return cls(handle, generation, handle.ready.remote())


def start_actor(cfg: JobConfig, worker_class: type, task_class: type, lease: LeaseToken) -> Any:
    c = cfg.cluster
    remote = ray.remote(worker_class).options(
        num_cpus=c.num_cpus_per_actor,
        num_gpus=c.num_gpus_per_actor,
        max_restarts=0,  # we replace dead actors ourselves and count the shard's attempts
        max_task_retries=0,
        # One call per in-flight shard runs at once: the queued shard reads ahead while the
        # current one computes (the worker's lock keeps compute one shard at a time).
        max_concurrency=c.max_in_flight_per_actor,
        # One actor per node before two on one: a node lost (a spot preemption) takes fewer actors
        # with it, and their replacements find room on the others.
        scheduling_strategy="SPREAD",
    )
    return remote.remote(cfg, task_class, lease)


def kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # already gone
        pass


def give_up_late(slots: list[Slot], timeout_s: float) -> int:
    """Seats whose replacement answered are plain seats again; a replacement still silent after
    ``timeout_s`` (never placed, or its model never loaded) is killed and its seat given up (its
    queued shards then fail and are retried on the others). Returns how many were given up."""
    given_up = 0
    for slot in slots:
        if slot.starting is None:
            continue
        answered, _ = ray.wait([slot.starting], timeout=0)
        if answered:
            slot.starting = None
        elif time.monotonic() - slot.since > timeout_s:
            kill(slot.handle)
            slot.handle, slot.starting = None, None
            slot.generation += 1
            given_up += 1
    return given_up
