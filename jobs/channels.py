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

from jobs.attribute import connect_ray, demo_root
from pipeline.config import ConfigError
from pipeline.config_load import load_config

DEMO_INVERSION = ("init_scale=0.1",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.channels", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="job YAML with method.name: extremal_channels and method.layer")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as for jobs.attribute; repeatable")
    p.add_argument("--inversion", action="append", default=None, metavar="KEY=VALUE",
                   help="a feature-inversion setting, e.g. max_iter=100; repeatable")
    p.add_argument("--max-shards", type=int, default=None, metavar="N", help="process at most N shards in this run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pipeline.channels import METHOD, ChannelTask, inversion_evaluation, inversion_settings

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.method.name != METHOD or "layer" not in cfg.method.params:
            raise ConfigError(f"method.name must be {METHOD} with a method.layer, got {cfg.method.name!r}")
        root = demo_root(cfg)
        pairs = args.inversion if args.inversion is not None else (list(DEMO_INVERSION) if root is not None else [])
        settings = inversion_settings(pairs)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray

    from demo import ensure_demo_assets
    from pipeline.driver import DriverError, run_job
    from pipeline.storage import OutputError

    t0 = time.monotonic()
    if root is not None:
        ensure_demo_assets(root, num_threads=1)
    print(f"inversion: {settings}", flush=True)
    started = connect_ray(cfg)
    try:
        summary = run_job(cfg, max_shards=args.max_shards, task_class=functools.partial(ChannelTask, inversion=settings),
                          evaluation=inversion_evaluation(settings))
    except (OutputError, DriverError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    print(summary.report())
    print(f"wall time: {time.monotonic() - t0:.1f} s")
    print(f"report: python -m jobs.report --input {cfg.output.uri} --out {cfg.output.uri.rstrip('/')}/report")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
