"""The driver: hand shards to worker actors, retry, quarantine, resume, report.

Data flows one way (docs/README.md, "Data flow"): the driver only sends shard URLs to actors and gets back each
shard's small done-marker; images and masks never pass through it. Each shard's part is committed
by the worker, so the driver's state can always be rebuilt from the output folder: a re-run skips
every shard with a done-marker (resume) and a shard is never committed twice.

Scheduling is our own ``ray.wait`` loop (not ``ray.util.ActorPool``, which hides which input
failed): at most ``max_in_flight_per_actor`` shards per actor (one computing, the next already
reading ahead in the same actor, so an actor never idles between shards); a failed shard waits
``retry_backoff_s * 2**(attempt-1)`` and goes back in the queue, up to ``max_retries`` re-runs,
then it is quarantined (status ``failed`` with the reason); a shard that does not exist is
quarantined at once (``ShardReadError.permanent``: retrying cannot help). An actor whose process died is
replaced by a new one; the shards it held are retried like any failure. A replacement that does
not start within ``startup_timeout_s`` (the cluster lost the room for it, with a node) gives up
its seat (``pipeline/actors.py``): the job goes on with the others, or stops when none is left.

The driver is generic over tasks: what an actor does to a shard is ``task_class``
(``pipeline.tasks``); the driver sees only shard URLs going out and done-markers coming back.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from pipeline import commit
from pipeline.actors import Slot, give_up_late, kill, start_actor
from pipeline.config import JobConfig
from pipeline.config_hash import config_hash
from pipeline.config_load import config_to_dict
from pipeline.done_index import IndexWriter
from pipeline.lease import Lease, LeaseLostError
from pipeline.preflight import Checked, preflight
from pipeline.progress import Progress
from pipeline.shards import shard_id
from pipeline.storage import OutputError, Storage, redact_url
from pipeline.summary import JobSummary, ShardState, resumed_states
from pipeline.tasks import AttributionTask
from pipeline.worker import ShardWorker

MAX_BACKOFF_S = 300.0
_REASON_CHARS = 500


class DriverError(RuntimeError):
    """The job cannot run at all (no workers can start, the cluster lacks the resources...)."""


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _one_line(text: str) -> str:
    return " ".join(text.split())[:_REASON_CHARS]


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for a failed shard: our exception (unwrapped from RayTaskError), or
    "worker died: ..." when the actor process went away."""
    if isinstance(exc, RayActorError):
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        if getattr(exc, "actor_init_failed", False):
            # The constructor raised (bad checkpoint, no GPU for device=cuda): its traceback ends
            # with the exception line, which is the reason.
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            return _one_line(f"worker failed to start: {lines[-1] if lines else type(exc).__name__}")
        detail = re.search(r"Worker exit detail:\s*(.+?)(?:\n|$)", text)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return _one_line(f"worker died ({type(exc).__name__}): {first} {detail.group(1) if detail else ''}")
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return _one_line(f"{type(cause).__name__}: {cause}")
        return _one_line(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
    return _one_line(f"{type(exc).__name__}: {exc}")


def _permanent(exc: BaseException) -> bool:
    """A failure that no retry can fix (a missing shard): quarantined at once."""
    return bool(getattr(getattr(exc, "cause", None), "permanent", False))


def num_workers(cfg: JobConfig, resources: dict[str, float], shards: int) -> int:
    """How many actors: ``cluster.num_actors`` if set; else one per ``num_gpus_per_actor`` of the
    cluster's GPUs (GPU actors) or per ``num_cpus_per_actor`` of its CPUs (CPU actors); never more
    than there are shards, at least one."""
    c = cfg.cluster
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if c.num_gpus_per_actor > 0 and gpus < c.num_gpus_per_actor:
        raise DriverError(
            f"cluster.num_gpus_per_actor={c.num_gpus_per_actor:g} but the Ray cluster has {gpus:g} GPUs; "
            "use a GPU cluster or set cluster.num_gpus_per_actor=0 (CPU actors)"
        )
    if c.num_cpus_per_actor > cpus:
        raise DriverError(f"cluster.num_cpus_per_actor={c.num_cpus_per_actor:g} but the Ray cluster has {cpus:g} CPUs")
    if c.num_actors is not None:
        n = c.num_actors
    elif c.num_gpus_per_actor > 0:
        n = math.floor(gpus / c.num_gpus_per_actor + 1e-9)
    else:
        n = math.floor(cpus / c.num_cpus_per_actor + 1e-9) if c.num_cpus_per_actor > 0 else 1
    n = max(1, min(n, shards))
    # Actors that the whole cluster cannot host would wait for resources forever: say so now.
    for what, per, have in (("GPU", c.num_gpus_per_actor, gpus), ("CPU", c.num_cpus_per_actor, cpus)):
        if per > 0 and n * per > have + 1e-9:
            asked = f"cluster.num_actors={c.num_actors}" if c.num_actors is not None else "cluster.num_actors=null"
            raise DriverError(
                f"{asked} ({n} actors for {shards} shards) x cluster.num_{what.lower()}s_per_actor={per:g} needs "
                f"{n * per:g} {what}s but the Ray cluster has {have:g}: lower cluster.num_actors (or null: as many as fit)"
            )
    return n


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def run_job(
    cfg: JobConfig,
    *,
    max_shards: int | None = None,
    progress_stream: TextIO | None = None,
    tty: bool | None = None,
    log_interval_s: float = 10.0,
    startup_timeout_s: float = 600.0,
    worker_class: type = ShardWorker,
    task_class: type = AttributionTask,
    checked: Checked | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> JobSummary:
    """Run (or resume) an attribution job on the connected Ray cluster; returns its summary.

    ``max_shards``: process at most this many shards in this run, leaving the rest ``pending``
    (a later run resumes). Raises ConfigError-like ``ValueError`` for a bad shard pattern,
    ``commit.OutputConflictError`` for an output holding another config's results,
    ``storage.OutputError`` when the output cannot be reached, ``DriverError`` when no worker can
    start. Shard failures are not exceptions: they are in the summary. ``worker_class``: the
    actor class (``ShardWorker`` or a subclass, e.g. the tests' worker that fails on purpose);
    ``task_class``: what each actor does to a shard (``pipeline.tasks``), any callable
    ``(cfg, device) -> ShardTask`` (a ``functools.partial`` binding its settings). ``checked``: the
    result of ``pipeline.preflight.preflight(cfg)`` if the caller ran it (else it runs here and
    raises ``ConfigError``); ``lease.OutputBusyError`` when another job holds the output.
    ``evaluation``: the settings of an evaluation task over ``cfg``'s results, hashed with ``cfg``
    (the output guard; the task's done-markers must carry the same hash) and recorded in the
    manifest's config under ``evaluation``.
    """
    if not ray.is_initialized():
        raise DriverError("Ray is not initialized: call ray.init() (jobs.attribute does) before run_job")
    stream = progress_stream if progress_stream is not None else sys.stdout
    start = time.monotonic()
    storage = Storage.from_config(cfg)
    checked = preflight(cfg) if checked is None else checked  # ConfigError before anything is written
    chash = checked.config_hash if evaluation is None else config_hash(cfg, checked.weights_digest, evaluation)
    uri = cfg.output.uri
    urls = list(checked.shards)
    # One job per output folder: the lease is taken before the folder is claimed or cleared, held
    # (renewed in the background) while shards run, and checked by every commit.
    lease = Lease(uri, chash, cfg.output.lease_ttl_s, storage)
    lease.acquire()
    try:
        lease.start_renewing()
        commit.check_output(uri, chash, cfg.output.overwrite, storage)
        states = resumed_states(urls, commit.resumable(uri, chash, storage, urls))
        resolved = config_to_dict(cfg) if evaluation is None else {**config_to_dict(cfg), "evaluation": dict(evaluation)}
        summary = _run_claimed(cfg, resolved, lease, states, max_shards, stream, tty, log_interval_s,
                               startup_timeout_s, (worker_class, task_class), start)
    finally:
        lease.release()
    return summary


def _run_claimed(
    cfg: JobConfig,
    resolved: dict[str, Any],
    lease: Lease,
    states: dict[str, ShardState],
    max_shards: int | None,
    stream: TextIO,
    tty: bool | None,
    log_interval_s: float,
    startup_timeout_s: float,
    classes: tuple[type, type],
    start: float,
) -> JobSummary:
    """The run, once the output is ours: ``states`` (resumed), dispatch the rest, write the done
    index and the manifest (``resolved``: the config as the manifest records it)."""
    uri, storage, chash = cfg.output.uri, lease.storage, lease.config_hash
    todo = [u for u, s in states.items() if s.status != "done"]
    if max_shards is not None:
        todo = todo[: max(0, max_shards)]

    summary = JobSummary(uri, chash, states, 0.0)
    already = sum(1 for s in states.values() if s.status == "done")
    progress = Progress(len(states), already, stream=stream, tty=tty, interval_s=log_interval_s)
    index = IndexWriter(uri, storage, lease.token)
    stopped: BaseException | None = None
    try:
        if todo:
            _dispatch(cfg, todo, states, summary, progress, startup_timeout_s, classes, lease, index)
    except BaseException as exc:  # an interrupt, a lost lease: the final writes still run
        stopped = exc
        exc.summary = summary  # type: ignore[attr-defined]  # what jobs.attribute prints on SIGINT/SIGTERM
        raise
    finally:
        progress.close()
        summary.seconds = time.monotonic() - start
        try:
            index.compact((
                {"shard": redact_url(u), "part": f"{commit.PARTS_DIR}/{shard_id(u)}.parquet", "config_hash": chash,
                 **s.manifest_entry()}
                for u, s in states.items() if s.status == "done"
            ), count=sum(1 for s in states.values() if s.status == "done"))
            summary.manifest = commit.write_manifest(
                uri, resolved, chash, commit.current_code_version(), {u: s.manifest_entry() for u, s in states.items()},
                storage, lease.token,
            )
        except OutputError as exc:
            # The shards are committed (their markers are the truth): a failing final write (a full
            # disk) is reported with the summary, never in its place, nor over what stopped the run.
            summary.write_error = str(exc)[:_REASON_CHARS]
            if stopped is None and isinstance(exc, LeaseLostError):
                raise
    return summary


def _dispatch(
    cfg: JobConfig,
    todo: list[str],
    states: dict[str, ShardState],
    summary: JobSummary,
    progress: Progress,
    startup_timeout_s: float,
    classes: tuple[type, type],
    lease: Lease,
    index: IndexWriter,
) -> None:
    """The ``ray.wait`` loop: runs ``todo`` on a pool of actors, updating ``states`` in place and
    adding each done-marker to ``index``. Stops (LeaseLostError) if the job loses the output's lease."""
    c = cfg.cluster
    n = num_workers(cfg, ray.cluster_resources(), len(todo))
    new_actor = functools.partial(start_actor, cfg, *classes, lease.token)
    slots = [Slot(new_actor()) for _ in range(n)]
    summary.workers = n
    try:
        _wait_ready(slots, startup_timeout_s, progress)
        queue: deque[str] = deque(todo)  # FIFO of shard URLs ready to run
        retry_heap: list[tuple[float, str]] = []  # (not before, url)
        in_flight: dict[Any, tuple[int, int, str]] = {}  # ref -> (slot, generation, url)

        while queue or retry_heap or in_flight:
            if lease.lost:
                raise LeaseLostError(lease.lost)
            if give_up_late(slots, startup_timeout_s):
                _seats_left(slots, startup_timeout_s, progress)
            now = time.monotonic()
            while retry_heap and retry_heap[0][0] <= now:
                queue.append(heapq.heappop(retry_heap)[1])
            _fill(cfg, slots, queue, in_flight, states)
            if not in_flight:
                time.sleep(min(1.0, max(0.0, retry_heap[0][0] - now)) if retry_heap else 0.0)
                progress.tick()
                continue
            wait_s = 1.0 if not retry_heap else min(1.0, max(0.01, retry_heap[0][0] - now))
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            for ref in ready:
                slot_i, generation, url = in_flight.pop(ref)
                state = states[url]
                try:
                    marker = ray.get(ref)
                except RayError as exc:
                    state.error = failure_reason(exc)
                    if isinstance(exc, RayActorError) and slots[slot_i].generation == generation:
                        # The process is gone (or unreachable): a fresh actor takes its seat.
                        kill(slots[slot_i].handle)
                        slots[slot_i] = Slot.replacement(new_actor(), generation + 1)
                        summary.replaced_workers += 1
                    if state.attempts <= c.max_retries and not _permanent(exc):
                        backoff = min(MAX_BACKOFF_S, c.retry_backoff_s * 2 ** (state.attempts - 1))
                        heapq.heappush(retry_heap, (time.monotonic() + backoff, url))
                        summary.retries += 1
                        progress.shard_retried()
                    else:
                        state.status = "failed"
                        progress.shard_failed()
                    continue
                state.status, state.error = "done", None
                state.rows, state.errors = int(marker["rows"]), int(marker["errors"])
                state.images, state.seconds = int(marker.get("images", 0)), float(marker.get("seconds", 0.0))
                index.add(marker)
                progress.shard_done(state.images)
            progress.tick()
    finally:
        for slot in slots:
            kill(slot.handle)


def _fill(
    cfg: JobConfig,
    slots: list[Slot],
    queue: deque[str],
    in_flight: dict[Any, tuple[int, int, str]],
    states: dict[str, ShardState],
) -> None:
    """Give queued shards to actors with fewer than ``max_in_flight_per_actor`` in flight,
    least loaded first (seats given up get none)."""
    limit = cfg.cluster.max_in_flight_per_actor
    seats = [i for i, slot in enumerate(slots) if slot.handle is not None]
    while queue and seats:
        load = [0] * len(slots)
        for slot_i, generation, _ in in_flight.values():
            if slots[slot_i].generation == generation:
                load[slot_i] += 1
        slot_i = min(seats, key=lambda i: load[i])
        if load[slot_i] >= limit:
            return
        url = queue.popleft()
        states[url].attempts += 1
        ref = slots[slot_i].handle.process.remote(url, states[url].attempts)
        in_flight[ref] = (slot_i, slots[slot_i].generation, url)


def _wait_ready(slots: list[Slot], timeout_s: float, progress: Progress | None = None) -> None:
    """Block until every actor has loaded its model, saying every ``progress.interval_s`` what
    it waits for; a worker that cannot start (bad checkpoint, no GPU for device=cuda) fails the
    whole job at once with its reason."""
    pending = [s.handle.ready.remote() for s in slots]
    deadline = time.monotonic() + timeout_s
    interval = progress.interval_s if progress is not None else 10.0
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GetTimeoutError()
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=min(interval, left))
            ray.get(ready)  # raises the reason of a worker that failed to start
            if pending and progress is not None:
                progress.note(
                    f"waiting for {len(pending)} of {len(slots)} workers to start (loading the model, or waiting "
                    f"for resources: available now {_resources(ray.available_resources())})"
                )
    except GetTimeoutError:
        raise DriverError(
            f"{len(pending)} of {len(slots)} workers did not start within {timeout_s:.0f} s; the cluster has "
            f"{_resources(ray.cluster_resources())} (available now: {_resources(ray.available_resources())})"
        ) from None
    except RayError as exc:
        reason = failure_reason(exc)
        prefix = "worker failed to start"
        raise DriverError(reason if reason.startswith(prefix) else f"{prefix}: {reason}") from None


def _seats_left(slots: list[Slot], timeout_s: float, progress: Progress) -> None:
    """After seats were given up: a line saying so, or DriverError when none is left."""
    left = sum(1 for slot in slots if slot.handle is not None)
    said = (f"a replacement worker did not start within {timeout_s:.0f} s (the cluster has "
            f"{_resources(ray.cluster_resources())}, available now: {_resources(ray.available_resources())})")
    if not left:
        raise DriverError(f"no worker left: {said}; run the same command again to resume")
    progress.note(f"{said}: going on with {left} of {len(slots)} workers")


def _resources(res: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU"))
