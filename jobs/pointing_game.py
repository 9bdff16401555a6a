"""``python -m jobs.pointing_game --results <attribution output uri> [--out <uri>]``
(or ``--config configs/<name>.yaml [--set key=value ...]``: the job's ``output.uri`` and storage)

The pointing game (docs/pointing_game.md, TorchRay's protocol) of an attribution job's Parquet parts, any
method, against the annotations in the shards the rows came from, with the ``center`` baseline on
the same pairs: per-class accuracy averaged over classes, all pairs and EBP's difficult subset.
Prints the table and writes it as CSV and Parquet under ``--out`` (default
``<results>/pointing_game``). One Ray task per part (``RAY_ADDRESS`` or a local Ray), or
``--local`` in this process. For TorchRay's benchmark models (``model.arch: torchray/...``, or
``--published voc07/vgg16``) each method's line has the published numbers of its cell beside it.

Exit codes: 0 done; 1 no parts, or a part or shard could not be read; 2 bad command line or config.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from pipeline.cli import ray_session, run_main
from pipeline.config_load import results_location
from pipeline.storage import Storage, join


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.pointing_game", description=__doc__.split("\n\n")[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", help="the attribution job's output URI (holds parts/)")
    src.add_argument("--config", help="the attribution job's YAML: its output.uri and storage are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as for jobs.attribute; repeatable")
    p.add_argument("--out", default=None, help="where the tables go (default <results>/pointing_game)")
    p.add_argument("--tolerance", type=float, default=15, help="hit radius in original pixels, strict (default 15)")
    p.add_argument("--smooth", type=float, default=None,
                   help="Gaussian sigma as a fraction of the image side, with the method card's side and padding "
                   "(default: the card's, as TorchRay's benchmark: 0.09 min(H, W) for extremal, 0.02 max(H, W) for "
                   "gradient and guided backprop)")
    p.add_argument("--difficult-flags", default=None, help="EBP difficult flag file (default: TorchRay's, by format)")
    p.add_argument("--published", default=None, metavar="DATASET/ARCH",
                   help="print TorchRay's published numbers of this cell beside ours (e.g. voc07/vgg16; default: "
                   "the config's model when it is torchray/<arch> with model.dataset)")
    p.add_argument("--local", action="store_true", help="evaluate the parts in this process, without Ray")
    p.add_argument("--max-in-flight", type=int, default=16, help="Ray tasks at once (default 16)")
    return p


def _job_shards(config: str | None, overrides: list[str], storage: Storage) -> tuple[str, ...]:
    """The attribution job's shard URLs when its config is given: the parts hold them redacted
    (a signed URL's query string is a credential), the config holds them signed."""
    if config is None:
        return ()
    from pipeline.config_load import load_config
    from pipeline.shards import expand_shards

    return tuple(expand_shards(load_config(config, overrides).input.shards, storage))


def _published(cell: str | None, config: str | None, overrides: list[str]) -> dict | None:
    """The published numbers of the cell named, or of the config's benchmark model; else None."""
    from pipeline.config_load import load_config
    from pipeline.evaluation.published import cell_of_model, parse_cell, published_table

    if cell is not None:
        found = parse_cell(cell)
    elif config is not None:
        model = load_config(config, overrides).model
        found = cell_of_model(model.arch, model.dataset)
    else:
        return None
    return None if found is None else published_table()[found]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        results, storage = results_location(args.results, args.config, args.overrides)
        published = _published(args.published, args.config, args.overrides)
    except ValueError as exc:  # a ConfigError, or --published naming no cell
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tolerance <= 0 or (args.smooth is not None and args.smooth < 0) or args.max_in_flight < 1:
        print("error: --tolerance and --max-in-flight must be positive, --smooth >= 0", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from pipeline.evaluation.pointing_run import run_pointing_game
    from pipeline.evaluation.pointing_table import format_summary, write_tables
    from pipeline.io.parts import check_attribution_output
    from pipeline.shards import ShardReadError
    from pipeline.storage import OutputError

    # Not an attribution output: one line through the jobs' exit-code table (2; unreadable: 1).
    refused = run_main(lambda: check_attribution_output(results, storage) or 0)
    if refused:
        return refused
    bar = tqdm(unit="part", desc="pointing game")
    try:
        def on_part(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with contextlib.nullcontext() if args.local else ray_session():
            result = run_pointing_game(
                results, storage, use_ray=not args.local, max_in_flight=args.max_in_flight, on_part=on_part,
                tolerance=args.tolerance, smooth=args.smooth, flags_path=args.difficult_flags,
                shards=_job_shards(args.config, args.overrides, storage),
            )
    except (FileNotFoundError, ShardReadError, OutputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a Ray task's failure arrives wrapped: report its cause in one line
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    print(format_summary(result, published))
    out = args.out or join(results, "pointing_game")
    try:
        urls = write_tables(out, result, storage)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tables: {', '.join(urls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
