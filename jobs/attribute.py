"""``python -m jobs.attribute --config configs/<name>.yaml [--set key=value ...]``

Runs (or resumes) an attribution job: extremal perturbations of every image of a WebDataset
dataset, one Parquet part per shard under ``output.uri`` (SPEC sections 2 and 3).

Ray: connects to ``RAY_ADDRESS`` (set by ``ray job submit``; ``RAY_ADDRESS=auto`` picks a
cluster started with ``ray start`` on this machine) or ``cluster.address``; otherwise starts a
private local Ray instance for the run (no dashboard, token auth off) and stops it at the end.

Exit codes: 0 every shard done; 1 some shard failed after its retries (or was not run), or the
job could not run (output unreachable, in use by another job or holding another config's
results, the cluster cannot host the actors, no worker could start); 2 bad command line or
config, including what is checked before Ray starts: the shard list, the model and its weights,
the reward and the method.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from demo import ensure_demo_assets
from pipeline.config import ConfigError, JobConfig, storage_options
from pipeline.config_load import load_config

DEMO_FACTORY = "demo.model:build_demo_model"
DEMO_CHECKPOINT = "demo_model.pt"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.attribute", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="job YAML, e.g. configs/demo.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value (YAML), e.g. --set extremal.max_iter=300; repeatable",
    )
    p.add_argument(
        "--max-shards", type=int, default=None, metavar="N",
        help="process at most N shards in this run (a later run resumes the rest)",
    )
    return p


def demo_root(cfg: JobConfig) -> str | None:
    """The demo assets folder when ``cfg`` is the demo (the demo model with a local
    ``demo_model.pt`` checkpoint), else None."""
    ckpt = cfg.model.checkpoint
    if cfg.model.factory != DEMO_FACTORY or not ckpt or "://" in ckpt or Path(ckpt).name != DEMO_CHECKPOINT:
        return None
    return str(Path(ckpt).parent)


def connect_ray(cfg: JobConfig) -> bool:
    """Connect to the configured cluster, or start a local one. Returns True when this call
    initialised Ray (the caller shuts it down), False when Ray was already initialised."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or cfg.cluster.address
    if address:
        ray.init(address=address)
    else:
        # A private single-machine cluster: token auth protects shared clusters, not this one.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", include_dashboard=False)
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # Imported here so that `--help` and config errors answer without loading Ray.
    import ray

    from pipeline.driver import DriverError, run_job
    from pipeline.preflight import preflight
    from pipeline.stopping import Stop, sigterm_as_interrupt
    from pipeline.storage import OutputError

    t0 = time.monotonic()
    root = demo_root(cfg)
    if root is not None:
        assets = ensure_demo_assets(root, num_threads=1)  # cached: a no-op after the first run
        print(f"demo assets: {len(assets.shards)} shards and a trained model in {assets.root}", flush=True)

    # Every config error (model, reward, method, shard list) before Ray starts or anything is
    # written: exit 2 with one line, and the corrected re-run is not refused as another config.
    try:
        checked = preflight(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = connect_ray(cfg)
    stop = Stop()
    try:
        with sigterm_as_interrupt() as stop:
            summary = run_job(cfg, max_shards=args.max_shards, checked=checked)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (Terminated): the shards done so far are kept
        stopped = getattr(exc, "summary", None)
        if stopped is not None:
            print(stopped.report())
        print("error: interrupted: run the same command again to resume", file=sys.stderr)
        return stop.exit_code
    except (OutputError, DriverError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the shard pattern matched nothing, a shard list is empty...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()

    print(summary.report())
    index = None
    if root is not None and summary.done:
        # The demo's samples carry their object's box: score the maps by TorchRay's protocol
        # (15 px, extremal masks smoothed and summed, centre baseline), in process (Ray is down).
        from pipeline.evaluation.pointing_run import run_pointing_game
        from pipeline.evaluation.pointing_table import format_summary, write_tables
        from pipeline.report import build_report
        from pipeline.storage import join

        game = run_pointing_game(cfg.output.uri, storage_options(cfg), use_ray=False)
        print("pointing game (TorchRay's protocol, python -m jobs.pointing_game):")
        print(format_summary(game))
        # Beside the parts, where jobs.pointing_game puts them: the report below shows them.
        write_tables(join(cfg.output.uri, "pointing_game"), game, storage_options(cfg))
        index = build_report([cfg.output.uri], join(cfg.output.uri, "report"), storage_options=storage_options(cfg))
    print(f"wall time: {time.monotonic() - t0:.1f} s")
    if index is not None:
        print(f"report: {index}")  # the demo's last line: open it in a browser
    if not summary.ok:
        print(f"error: {len(summary.failed)} failed and {len(summary.pending)} unfinished of "
              f"{len(summary.shards)} shards", file=sys.stderr)
        for url, reason in summary.failures().items():
            print(f"  {url}: {reason}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
