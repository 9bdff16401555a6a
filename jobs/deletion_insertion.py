"""``python -m jobs.deletion_insertion --results <attribution output uri> [--config <job yaml>]
[--set key=value ...] [--out <uri>] [--step N] [--deletion-substrate zeros|blur]``

Deletion and insertion (docs/evaluations.md, "Deletion and insertion": RISE's protocol) of an attribution job's maps: every
shard the job finished is a task on the job's Ray actors (its model, preprocessing, device and
cluster settings: ``--config``, by default the ``config.yaml`` the job wrote under its output),
writing one Parquet part of per-row AUCs and curves per shard under ``--out`` (default
``<results>/deletion_insertion``), resumable like any job. Then prints the per-method summary and
writes it as ``deletion_insertion.csv`` / ``.parquet`` under ``--out``.

Exit codes: 0 every shard done; 1 some shard failed, or the results cannot be read; 2 bad command
line or config (or a config that did not make these results).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import yaml

from pipeline.config import ConfigError, JobConfig
from pipeline.config_load import apply_override, config_from_dict, load_config
from pipeline.storage import OutputError, Storage, join


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.deletion_insertion", description=__doc__.split("\n\n")[1])
    p.add_argument("--results", required=True, help="the attribution job's output URI (holds parts/, config.yaml)")
    p.add_argument("--config", default=None, help="the attribution job's YAML (default <results>/config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (cluster, worker, storage...), as for jobs.attribute; repeatable")
    p.add_argument("--out", default=None, help="where the parts and tables go (default <results>/deletion_insertion)")
    p.add_argument("--step", type=int, default=None, help="pixels per step (default: the input's width, one row)")
    p.add_argument("--deletion-substrate", choices=("zeros", "blur"), default="zeros",
                   help="what deleted pixels become (default zeros, in normalised input space)")
    p.add_argument("--forward-batch", type=int, default=None,
                   help="perturbed images per forward pass (default 32 on a CPU, 256 on CUDA)")
    p.add_argument("--road", action="store_true",
                   help="also ROAD's MoRF / LeRF curves (noisy linear imputation, fractions 0.1..0.9)")
    p.add_argument("--max-shards", type=int, default=None, metavar="N", help="at most N shards in this run")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier evaluation under --out first")
    return p


def results_config(results: str, path: str | None, overrides: list[str]) -> JobConfig:
    """The attribution job's config: ``path`` or the ``config.yaml`` under ``results``, with
    ``overrides``. Raises ConfigError."""
    if path is not None:
        return load_config(path, overrides)
    url = join(results, "config.yaml")
    try:
        with Storage().open(url) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {url} (give --config): {' '.join(str(exc).split())}") from exc
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pipeline.evaluation.deletion_task import DeletionInsertionTask, DeletionSettings
    from pipeline.preflight import preflight

    try:
        cfg = results_config(args.results, args.config, args.overrides)
        settings = DeletionSettings(args.results, args.step, args.deletion_substrate, args.forward_batch, args.road)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    storage = Storage.from_config(cfg)
    out = args.out or join(args.results, "deletion_insertion")

    from pipeline import commit

    try:
        made = storage.read_json(join(args.results, commit.CONFIG_JSON))
        done = sorted(commit.load_done(args.results, storage))
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        made_by = preflight(cfg).config_hash  # the attribution job's hash: its config and weights
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if made is not None and made.get("config_hash") != made_by:
        print(f"error: the config did not make {args.results} (its hash {str(made.get('config_hash'))[:12]}, "
              f"this one {made_by[:12]}): give that job's config", file=sys.stderr)
        return 2
    if not done:
        print(f"error: {args.results} has no finished shard", file=sys.stderr)
        return 1
    if cfg.model.checkpoint is None and cfg.model.weights is None:
        # Each load of such a model draws new random weights: not the model that made the maps.
        print("warning: the model has no weights or checkpoint: the evaluation runs other random weights "
              "than the attribution did", file=sys.stderr)

    from pipeline.cli import ray_session
    from pipeline.driver import DriverError, run_job
    from pipeline.evaluation.deletion_table import format_summary, summarize, summary_table, write_summary

    # The attribution job's config, over the shards it finished, writing to the evaluation's folder.
    eval_cfg = dataclasses.replace(
        cfg, input=dataclasses.replace(cfg.input, shards=tuple(done)),
        output=dataclasses.replace(cfg.output, uri=out, overwrite=args.overwrite),
    )
    t0 = time.monotonic()
    try:
        with ray_session(eval_cfg.cluster.address):
            summary = run_job(eval_cfg, max_shards=args.max_shards, evaluation=settings.hashed(),
                              task_class=functools.partial(DeletionInsertionTask, settings=settings))
    except (OutputError, DriverError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary.report())
    try:
        tallies = summarize(out, storage)
        print(format_summary(tallies))
        urls = write_summary(out, summary_table(tallies, args.deletion_substrate), storage)
        print(f"tables: {', '.join(urls)}")
    except (FileNotFoundError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wall time: {time.monotonic() - t0:.1f} s")
    if not summary.ok:
        for url, reason in summary.failures().items():
            print(f"  {url}: {reason}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
