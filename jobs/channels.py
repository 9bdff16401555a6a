"""``python -m jobs.channels --config configs/methods/demo_extremal_channels.yaml [--set key=value ...]
[--inversion key=value ...]``

Channel attribution over a dataset (docs/channels.md): the registry's ``extremal_channels`` at
``method.layer`` for the ``extremal.areas``, one Parquet row per (image, target) with the channel
masks and channel-saliency maps, and per image the feature inversions of the original activations
and of the activations perturbed by the optimal channel mask (``inversion_original`` /
``inversion_perturbed``, RGB PNG). Same shards, Ray actors, resume and exit codes as
``jobs.attribute``; ``python -m jobs.report --input <output.uri>`` shows the rows side by side.

``--inversion``: ``extremal_core.inversion.InversionSettings`` fields (docs/channels.md defaults: 200
iterations, lr 100, init 1e-3; steps kept within the black..white input range); the demo's small
BatchNorm CNN uses ``init_scale=0.1`` unless given (from 1e-3 its first ReLUs are all dead).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from pipeline.cli import UsageError, add_config_arguments, job_config, run_attribution, run_main
from pipeline.config import ConfigError

DEMO_INVERSION = ("init_scale=0.1",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.channels", description=__doc__.split("\n\n")[1])
    add_config_arguments(p, help="job YAML with method.name: extremal_channels and method.layer")
    p.add_argument("--inversion", action="append", default=None, metavar="KEY=VALUE",
                   help="a feature-inversion setting, e.g. max_iter=100; repeatable")
    p.add_argument("--max-shards", type=int, default=None, metavar="N", help="process at most N shards in this run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        from demo import demo_root, ensure_demo_assets
        from pipeline.channels import METHOD, ChannelTask, inversion_evaluation, inversion_settings

        cfg = job_config(args)
        if cfg.method.name != METHOD or "layer" not in cfg.method.params:
            raise ConfigError(f"method.name must be {METHOD} with a method.layer, got {cfg.method.name!r}")
        root = demo_root(cfg.model.factory, cfg.model.checkpoint)
        pairs = args.inversion if args.inversion is not None else (list(DEMO_INVERSION) if root is not None else [])
        try:
            settings = inversion_settings(pairs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        t0 = time.monotonic()
        if root is not None:
            ensure_demo_assets(root, num_threads=1)
        print(f"inversion: {settings}", flush=True)
        summary = run_attribution(cfg, args.max_shards, task_class=functools.partial(ChannelTask, inversion=settings),
                                  evaluation=inversion_evaluation(settings))
        print(f"wall time: {time.monotonic() - t0:.1f} s")
        print(f"report: python -m jobs.report --input {cfg.output.uri} --out {cfg.output.uri.rstrip('/')}/report")
        return summary.exit_code

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
