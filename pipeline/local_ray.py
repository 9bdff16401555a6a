"""A job's private local Ray instance, which dies with the job's driver however the driver ends.

Ray started by ``ray.init(address="local")`` in the driver ties its GCS server and raylet to the
driver (the kernel kills them when it dies), but not what the raylet started: when the driver is
killed with SIGKILL (the OOM killer, a scheduler, ``kill -9``), the raylet's dashboard and
runtime-env agents spend a minute trying to report the raylet's death to the dead GCS before they
exit, and its workers take seconds to notice. So the instance is started by a small keeper
process instead (``python -m pipeline.local_ray``), in a session of its own: every Ray process of
the instance is in the keeper's process group and nothing else is. The keeper holds the read end
of a pipe whose only writer is the driver; end of file (the driver closed it, or died) stops the
instance and then kills what is left of that group. The driver connects to the instance as to any
cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

# A graceful ``ray.shutdown`` gets this long before the group is killed outright.
SHUTDOWN_GRACE_S = 10.0
# The driver's wait for the keeper to be gone at the end of a job.
STOP_WAIT_S = 30.0
_ADDRESS = "ray-address: "


class LocalRayError(RuntimeError):
    """The private local Ray instance did not start (its own output, on stderr, says why)."""


@contextlib.contextmanager
def private_ray() -> Iterator[str]:
    """A private local Ray instance for the block (no dashboard), yielding its GCS address for
    ``ray.init(address=...)``. The block's end, or the driver's death, stops it; on exit the
    block waits until the instance's processes are gone."""
    root = str(Path(__file__).resolve().parents[1])  # the keeper imports this module
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    # stderr is the driver's: Ray's own words if it cannot start. A new session: the terminal's
    # Ctrl-C reaches the driver only, which then stops the instance itself.
    keeper = subprocess.Popen([sys.executable, "-m", "pipeline.local_ray"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, start_new_session=True)
    try:
        line = keeper.stdout.readline().decode()
        if not line.startswith(_ADDRESS):
            raise LocalRayError("the private local Ray instance did not start (its error is above)")
        yield line[len(_ADDRESS):].strip()
    finally:
        keeper.stdin.close()  # the keeper's signal to stop
        try:
            keeper.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(keeper.pid, signal.SIGKILL)  # the group the keeper leads: this instance only
            keeper.wait()
        keeper.stdout.close()


def _kill_instance() -> None:
    """SIGKILL to what the keeper started (the raylet's workers lead process groups of their
    own: found as descendants while the raylet lives) and to the keeper's group, itself last."""
    import psutil  # Ray's own copy, importable once ray is

    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            p.kill()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _keep() -> None:
    """The keeper: start the instance, print its address, wait for end of file on stdin, stop."""
    import ray

    # Private copies of the pipes; the instance's processes inherit /dev/null and stderr instead,
    # so none of them holds the driver's pipe or blocks writing to one nobody reads.
    watch, report = os.dup(0), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # the driver reports that the instance did not start; here is why
        print(f"error: local Ray: {' '.join(str(exc).split())}", file=sys.stderr)
        _kill_instance()
    os.write(report, f"{_ADDRESS}{ray.get_runtime_context().gcs_address}\n".encode())
    os.close(report)
    while os.read(watch, 4096):  # nothing is sent: only end of file matters
        pass
    # Past the grace period, kill everything whatever the shutdown is doing.
    sweep = threading.Timer(SHUTDOWN_GRACE_S, _kill_instance)
    sweep.daemon = True
    sweep.start()
    try:
        ray.shutdown()
    finally:
        _kill_instance()  # whatever the shutdown left, and the keeper itself


if __name__ == "__main__":
    _keep()
