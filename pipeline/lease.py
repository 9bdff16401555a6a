"""The output lease: at most one job writes an output folder at a time.

Layout: ``<output>/_lease/<generation>.json`` (``00000001.json``, ...), each written by one job.
The lease's holder is the job whose file has the highest generation, while that file is live
(``expires_at`` in the future and not ``released``).

The protocol needs one atomic primitive, *create if absent* (locally ``os.link`` of a complete
temp file, which fails if the name exists; on S3 a PUT with ``If-None-Match: *``; a filesystem
without one gets a best-effort check-write-verify, with a warning):

- acquire: read the highest generation ``g``. If it is live, the output is busy
  (``OutputBusyError``). Otherwise create ``g + 1`` if absent; of any number of jobs racing for
  ``g + 1`` exactly one creation succeeds, the others re-read and find ``g + 1`` live (busy).
- renew: the holder rewrites its own file with a later ``expires_at``; nobody else ever writes a
  generation that exists, so this cannot clobber another job's claim.
- check (before every commit, in the workers and the driver): the highest generation is still
  ours (one LIST). A job that stopped renewing for ``ttl_s`` (suspended, partitioned) may be
  superseded by ``g + 1``; its next check fails (``LeaseLostError``) and it commits nothing more.
  A worker re-uses a passed check for ``reuse_s`` (``reuse_window``: at most 5 s), so a stream of
  small shards costs far less than one request each; in exchange, a job that takes over a lease
  that was not released waits ``reuse_s`` after creating its generation before it touches the
  folder, so a check made before the takeover has run out before the new job writes anything
  (durations only: no clock is compared).
- release: rewrite our file as ``released`` (never delete it: the highest generation must not go
  back to an older job's file, or that job's check would pass again).

A holder on this machine whose process is gone (a driver killed with SIGKILL) is stale at once,
without waiting for ``ttl_s``: the file records the host (hostname, boot id, pid namespace) and
pid. Generations are never reused, so a check can never be fooled by an older job's file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from pipeline.storage import OutputError, Storage, describe, is_local, join, json_bytes

LEASE_DIR = "_lease"
_NAME = re.compile(r"^(\d{8})\.json$")


class OutputBusyError(OutputError):
    """Another job holds the output's lease."""


class LeaseLostError(OutputError):
    """This job's lease was taken over (it stopped renewing for longer than its TTL)."""


def machine_id() -> str:
    """This machine and pid namespace: pids are only comparable between processes that share it."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path, encoding="ascii") as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("?")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_live(record: dict[str, Any], now: float | None = None) -> bool:
    """Whether a lease file still holds the output."""
    if record.get("released"):
        return False
    if float(record.get("expires_at") or 0) <= (time.time() if now is None else now):
        return False
    if record.get("machine") == machine_id() and isinstance(record.get("pid"), int):
        return _pid_alive(record["pid"])  # a killed driver on this machine: stale at once
    return True


def _create_exclusive(url: str, data: bytes, storage: Storage) -> bool:
    """Create ``url`` holding ``data`` if it does not exist; False if it does. Readers never see
    a partial file."""
    fs, path = storage.url_to_fs(url)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # atomic, fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except TypeError:  # a filesystem without exclusive writes (pipe_file takes no `mode`)
        return _create_best_effort(fs, path, data)
    except Exception as exc:
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise


def _create_best_effort(fs: Any, path: str, data: bytes) -> bool:
    """Check-then-write-then-verify, for filesystems with no create-if-absent: not race-proof (two
    jobs starting within the same second could both proceed), so it warns."""
    warnings.warn(
        f"{fs.protocol} has no exclusive write: the output lease is best-effort there", RuntimeWarning, stacklevel=3
    )
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    time.sleep(1.0)
    fs.invalidate_cache(path)
    return fs.cat_file(path) == data


def reuse_window(ttl_s: float) -> float:
    """How long a passed check is re-used: short against the TTL (renewals every ``ttl_s / 4``)."""
    return min(5.0, ttl_s / 4)


# (output, generation, run) -> monotonic time until which this process's last passed check holds.
_PASSED: dict[tuple[str, int, str], float] = {}


@dataclass(frozen=True)
class LeaseToken:
    """What a worker needs to check that its job still holds the output before committing
    (picklable: it travels to the actors). ``reuse_s``: how long a passed check is re-used."""

    output_uri: str
    generation: int
    run_id: str
    config_hash: str
    reuse_s: float = 0.0

    def check(self, storage: Storage = Storage(), fresh: bool = False) -> None:
        """Raise LeaseLostError unless this job's generation is still the highest (a check that
        passed less than ``reuse_s`` ago counts, unless ``fresh``)."""
        key = (self.output_uri, self.generation, self.run_id)
        started = time.monotonic()
        if not fresh and started < _PASSED.get(key, 0.0):
            return
        gens = _listing(self.output_uri, storage)
        if gens and gens[-1] == self.generation:
            _PASSED[key] = started + self.reuse_s
            return
        _PASSED.pop(key, None)
        current = highest(self.output_uri, storage)
        if current is None or current[0] != self.generation:
            other = current[1] if current else {}
            raise LeaseLostError(
                f"{self.output_uri}: this job (run {self.run_id[:8]}) lost its lease to run "
                f"{str(other.get('run_id', '?'))[:8]} on {other.get('host', '?')}: nothing more is committed"
            )


def _listing(output_uri: str, storage: Storage) -> list[int]:
    url = join(output_uri, LEASE_DIR)
    try:
        fs, path = storage.url_to_fs(url)
        fs.invalidate_cache(path)
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise OutputError(f"cannot list {url}: {describe(exc)}") from exc
    found = (_NAME.match(str(n).rstrip("/").rpartition("/")[2]) for n in names)
    return sorted(int(m.group(1)) for m in found if m)


def _read(output_uri: str, generation: int, storage: Storage) -> dict[str, Any]:
    url = join(output_uri, LEASE_DIR, f"{generation:08d}.json")
    try:
        fs, path = storage.url_to_fs(url)
        fs.invalidate_cache(path)
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # unreadable: treated as not live (created files are always whole)
    except Exception as exc:
        raise OutputError(f"cannot read {url}: {describe(exc)}") from exc


def highest(output_uri: str, storage: Storage = Storage()) -> tuple[int, dict[str, Any]] | None:
    """The highest lease generation and its record, or None."""
    gens = _listing(output_uri, storage)
    return (gens[-1], _read(output_uri, gens[-1], storage)) if gens else None


def _busy_message(output_uri: str, record: dict[str, Any]) -> str:
    left = max(0.0, float(record.get("expires_at") or 0) - time.time())
    return (
        f"{output_uri} is in use by another job (run {str(record.get('run_id', '?'))[:8]}, host "
        f"{record.get('host', '?')}, pid {record.get('pid', '?')}, config {str(record.get('config_hash', '?'))[:12]}); "
        f"its lease expires in {left:.0f} s unless renewed: wait for it, or use another output.uri"
    )


class Lease:
    """This job's hold on an output folder: ``acquire()``, then ``start_renewing()``; ``check()``
    before committing; ``release()`` at the end (also as a context manager)."""

    def __init__(
        self, output_uri: str, config_hash: str, ttl_s: float = 60.0, storage: Storage = Storage()
    ) -> None:
        self.output_uri, self.config_hash, self.ttl_s = output_uri, config_hash, float(ttl_s)
        self.storage = storage
        self.run_id = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost: str | None = None  # set by the renewing thread when the lease is gone
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, released: bool = False) -> bytes:
        now = time.time()
        return json_bytes({
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "host": socket.gethostname(),
            "machine": machine_id(),
            "pid": os.getpid(),
            "renewed_at": now,
            "ttl_s": self.ttl_s,
            "expires_at": 0.0 if released else now + self.ttl_s,
            "released": released,
        })

    def _url(self) -> str:
        return join(self.output_uri, LEASE_DIR, f"{self.generation:08d}.json")

    @property
    def token(self) -> LeaseToken:
        assert self.generation is not None, "acquire() first"
        return LeaseToken(self.output_uri, self.generation, self.run_id, self.config_hash, reuse_window(self.ttl_s))

    def acquire(self, attempts: int = 5) -> LeaseToken:
        """Take the lease or raise OutputBusyError (another live holder)."""
        for _ in range(attempts):
            current = highest(self.output_uri, self.storage)
            if current is not None and is_live(current[1]):
                raise OutputBusyError(_busy_message(self.output_uri, current[1]))
            gen = 1 if current is None else current[0] + 1
            url = join(self.output_uri, LEASE_DIR, f"{gen:08d}.json")
            try:
                created = _create_exclusive(url, self._record(), self.storage)
            except Exception as exc:
                raise OutputError(f"cannot write {url}: {describe(exc)}") from exc
            # A create retried after an ambiguous failure (the server wrote it, the reply was lost)
            # finds its own file: that is ours too.
            if created or _read(self.output_uri, gen, self.storage).get("run_id") == self.run_id:
                self.generation = gen
                if current is not None and not current[1].get("released"):
                    # Taken over (expired, or its driver died): its workers' passed checks run out first.
                    time.sleep(reuse_window(float(current[1].get("ttl_s") or self.ttl_s)))
                return self.token
            # Someone else created this generation first: re-read (it is live: busy).
        raise OutputBusyError(f"{self.output_uri}: could not take the lease after {attempts} tries (other jobs racing)")

    def check(self) -> None:
        """Raise LeaseLostError unless we still hold the lease."""
        if self.lost:
            raise LeaseLostError(self.lost)
        self.token.check(self.storage, fresh=True)

    def renew(self) -> None:
        self.check()
        self.storage.write_bytes(self._url(), self._record())

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLostError as exc:
                self.lost = str(exc)
                return
            except OutputError:
                continue  # a transient storage failure: the next renewal retries, within the TTL

    def start_renewing(self) -> None:
        """Renew in a background thread every ``ttl_s / 4``; ``lost`` is set if it fails for good."""
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and mark our file released (if we still hold the lease)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.generation is None:
            return
        try:
            self.token.check(self.storage, fresh=True)
            self.storage.write_bytes(self._url(), self._record(released=True))
        except OutputError:
            pass  # lost or unreachable: the TTL frees it

    def __enter__(self) -> Lease:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
