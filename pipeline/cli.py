"""The scaffold every ``jobs/*`` entry point stands on: the job's config from ``--config`` plus
``--set`` overrides, the Ray session, and one table from exception type to exit code, printed as a
one-line ``error: ...``. A job's ``main`` parses its own arguments and hands its body to
``run_main``; nothing else about a job is shared here.

Exit codes: 0 done; 1 the job ran and something failed (an output or shard unreadable, a shard
failed after its retries, the driver could not run); 2 bad command line or config.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pipeline.config import ConfigError, JobConfig
from pipeline.config_load import load_config

if TYPE_CHECKING:
    from pipeline.summary import JobSummary


class UsageError(Exception):
    """A bad command-line value (exit 2)."""


class JobFailed(Exception):
    """The job ran and could not finish (exit 1); the message says why."""


def _exit_codes() -> list[tuple[type[BaseException], int]]:
    """The table, first match wins (imported lazily: ``--help`` answers without Ray)."""
    from pipeline.driver import DriverError
    from pipeline.local_ray import LocalRayError
    from pipeline.shards import ShardReadError
    from pipeline.storage import OutputError

    return [
        (ConfigError, 2), (UsageError, 2),
        (JobFailed, 1), (LocalRayError, 1), (OutputError, 1), (DriverError, 1),
        (ShardReadError, 1), (FileNotFoundError, 1), (OSError, 1),
        # What the driver finds wrong in the input while running (an unknown layer, a shard list
        # that expands to nothing): the config's fault.
        (ValueError, 2),
    ]


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_main(body: Callable[[], int]) -> int:
    """``body()``'s exit code, or the table's for the exception it raised, with ``error: <one
    line>`` on stderr. Exceptions outside the table propagate (a bug shows its traceback).
    SIGINT and SIGTERM stop the body the same way (the driver writes its manifest and releases
    its lease on the way out): the summary so far is printed and the exit code is the shell's,
    130 or 143."""
    from pipeline.stopping import sigterm_as_interrupt

    with sigterm_as_interrupt() as stop:
        try:
            return body()
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (Terminated): the shards done so far are kept
            stopped = getattr(exc, "summary", None)
            if stopped is not None:
                print(stopped.report())
            print("error: interrupted: run the same command again to resume", file=sys.stderr)
            return stop.exit_code
        except Exception as exc:
            for typ, code in _exit_codes():
                if isinstance(exc, typ):
                    stopped = getattr(exc, "summary", None)  # a run that stopped midway (no worker left)
                    if stopped is not None:
                        print(stopped.report())
                    print(f"error: {one_line(exc)}", file=sys.stderr)
                    return code
            raise


def add_config_arguments(p: argparse.ArgumentParser, required: bool = True, help: str = "job YAML") -> None:
    """``--config`` and the repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", required=required, help=help)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value (YAML), e.g. --set extremal.max_iter=300; repeatable",
    )


def job_config(args: argparse.Namespace) -> JobConfig:
    """The config ``--config`` and ``--set`` describe (ConfigError otherwise)."""
    return load_config(args.config, args.overrides)


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray connected for the block: ``RAY_ADDRESS`` (set by ``ray job submit``), else ``address``
    (``cluster.address``), else a private local instance (no dashboard, token auth off: it
    protects shared clusters, not this one), stopped at the end and gone with the driver if the
    driver is killed (``pipeline/local_ray.py``). A Ray already initialised in this process is
    used as it is and left running; a cluster connected to is never stopped."""
    import ray

    from pipeline.local_ray import private_ray

    if ray.is_initialized():
        yield
        return
    target = os.environ.get("RAY_ADDRESS") or address
    with contextlib.ExitStack() as stack:
        if not target:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            target = stack.enter_context(private_ray())
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=target)
        if handler is not None and threading.current_thread() is threading.main_thread():
            # ray.init replaces it with its own (an exit with a native stack dump and SIGABRT):
            # SIGTERM must stop the job as ``run_main`` says.
            signal.signal(signal.SIGTERM, handler)
        stack.callback(ray.shutdown)  # disconnects first, then the private instance stops
        yield


def run_attribution(cfg: JobConfig, max_shards: int | None = None, **run_options: Any) -> JobSummary:
    """An attribution job end to end: everything checkable before Ray (``preflight``: exit 2 with
    one line, nothing written), then the job on the Ray session; prints the summary and returns
    it. ``run_options``: ``run_job``'s (``task_class``, ``evaluation``)."""
    from pipeline.driver import run_job
    from pipeline.preflight import preflight

    checked = preflight(cfg)
    with ray_session(cfg.cluster.address):
        summary = run_job(cfg, max_shards=max_shards, checked=checked, **run_options)
    print(summary.report())
    return summary


def failures(summary: JobSummary) -> int:
    """The job's exit code, the failed shards listed on stderr."""
    if not summary.ok:
        print(f"error: {len(summary.failed)} failed and {len(summary.pending)} unfinished of "
              f"{len(summary.shards)} shards", file=sys.stderr)
        for url, reason in summary.failures().items():
            print(f"  {url}: {reason}", file=sys.stderr)
    return summary.exit_code
