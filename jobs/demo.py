"""``python -m jobs.demo [--config configs/demo.yaml] [--set key=value ...]``

The demo: builds (once, cached) its synthetic shards and trained CNN where the config's
checkpoint lies, runs the attribution job as ``jobs.attribute`` does, then scores the maps with
the pointing game (the demo's samples carry their object's box; TorchRay's protocol, as
``jobs.pointing_game``) and writes the HTML report beside the parts (as ``jobs.report``). Its
last line names the report. Exit codes as ``jobs.attribute``.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.cli import UsageError, add_config_arguments, failures, job_config, run_attribution, run_main
from pipeline.storage import Storage

DEFAULT_CONFIG = "configs/demo.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[1])
    add_config_arguments(p, required=False, help=f"the demo's YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--max-shards", type=int, default=None, metavar="N", help="process at most N shards in this run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.config = args.config or DEFAULT_CONFIG

    def body() -> int:
        from demo import demo_root, ensure_demo_assets

        cfg = job_config(args)
        root = demo_root(cfg.model.factory, cfg.model.checkpoint)
        if root is None:
            raise UsageError("the demo's model is model.factory: demo.model:build_demo_model with a local demo_model.pt "
                             "checkpoint; run other configs with python -m jobs.attribute")
        t0 = time.monotonic()
        assets = ensure_demo_assets(root, num_threads=1)  # cached: a no-op after the first run
        print(f"demo assets: {len(assets.shards)} shards and a trained model in {assets.root}", flush=True)
        summary = run_attribution(cfg, args.max_shards)
        index = _evaluate(cfg) if summary.done else None
        print(f"wall time: {time.monotonic() - t0:.1f} s")
        if index is not None:
            print(f"report: {index}")  # the demo's last line: open it in a browser
        return failures(summary)

    return run_main(body)


def _evaluate(cfg) -> str:
    """The pointing game (in process: Ray is down) and the report; returns the report's index."""
    from pipeline.evaluation.pointing_run import run_pointing_game
    from pipeline.evaluation.pointing_table import format_summary, write_tables
    from pipeline.report import build_report
    from pipeline.storage import join

    storage = Storage.from_config(cfg)
    game = run_pointing_game(cfg.output.uri, storage, use_ray=False)
    print("pointing game (TorchRay's protocol, python -m jobs.pointing_game):")
    print(format_summary(game))
    # Beside the parts, where jobs.pointing_game puts them: the report below shows them.
    write_tables(join(cfg.output.uri, "pointing_game"), game, storage)
    return build_report([cfg.output.uri], join(cfg.output.uri, "report"), storage=storage)


if __name__ == "__main__":
    sys.exit(main())
