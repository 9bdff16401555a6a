"""``python -m jobs.area_growth --results <attribution output uri> [--out <uri>]``
(or ``--config configs/<name>.yaml [--set key=value ...]``: the job's ``output.uri`` and storage)

Area growth (docs/evaluations.md, "Area growth") of an extremal job: per class, the distribution of a* over the
areas, the share of rows reaching v >= 1 and the mean v_a per area, streamed over the Parquet
parts (only the small columns). Prints the table and writes ``area_growth_classes``,
``area_growth_optimal_area`` and ``area_growth_scores`` as CSV and Parquet under ``--out``
(default ``<results>/area_growth``).

Exit codes: 0 done; 1 no parts or no extremal rows, or the results cannot be read; 2 bad command
line or config.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError
from pipeline.config_load import results_location
from pipeline.storage import OutputError, join


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.area_growth", description=__doc__.split("\n\n")[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", help="the attribution job's output URI (holds parts/)")
    src.add_argument("--config", help="the attribution job's YAML: its output.uri and storage are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as for jobs.attribute; repeatable")
    p.add_argument("--out", default=None, help="where the tables go (default <results>/area_growth)")
    p.add_argument("--print-classes", type=int, default=20, help="classes printed after the all-classes line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        results, storage = results_location(args.results, args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from pipeline.evaluation.area_growth import area_growth, format_summary, write_tables

    try:
        result = area_growth(results, storage)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not result.classes:
        print(f"error: no extremal rows under {results} ({result.skipped} rows skipped)", file=sys.stderr)
        return 1
    print(format_summary(result, args.print_classes))
    try:
        urls = write_tables(args.out or join(results, "area_growth"), result, storage)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tables: {', '.join(urls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
