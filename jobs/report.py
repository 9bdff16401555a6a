"""``python -m jobs.report --input <output uri> [<output uri> ...] --out <dir or uri>``

A static HTML report (``index.html`` + PNGs, no server: it opens from disk or object storage) of
one or more attribution outputs and the evaluations beside them: run facts from the manifest,
area growth and a* per class, the pointing-game tables, overlays of a deterministic sample of N
rows per class and, with several outputs (methods over the same data), a comparison column per
method. Reads only the scalar columns of every row and the drawn rows' maps: time and memory stay
flat in the size of the run.

Exit codes: 0 written; 1 an input has no parts or a file could not be read or written; 2 bad
command line.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import UsageError, run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n\n")[1])
    p.add_argument("--input", nargs="+", required=True, metavar="URI",
                   help="attribution output(s) (each holds parts/); the first is the primary one")
    p.add_argument("--out", required=True, help="folder or URI for index.html and its images")
    p.add_argument("--per-class", type=int, default=4, metavar="N", help="rows drawn per class (default 4)")
    p.add_argument("--max-classes", type=int, default=20, metavar="N",
                   help="classes shown, the smallest class ids first (default 20)")
    p.add_argument("--title", default=None, help="page title (default: the methods)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        if args.per_class < 1 or args.max_classes < 1:
            raise UsageError("--per-class and --max-classes must be >= 1")
        from pipeline.io.parts import check_attribution_output
        from pipeline.report import build_report

        for uri in args.input:
            check_attribution_output(uri)
        index = build_report(args.input, args.out, per_class=args.per_class, max_classes=args.max_classes, title=args.title)
        print(f"report: {index}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
