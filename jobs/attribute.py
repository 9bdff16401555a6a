"""``python -m jobs.attribute --config configs/<name>.yaml [--set key=value ...]``

Runs (or resumes) an attribution job: the configured method on every image of a WebDataset
dataset, one Parquet part per shard under ``output.uri`` (docs/parquet.md, docs/cli.md). The demo, with
its assets built first and its pointing game and report after: ``python -m jobs.demo``.

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
import sys
import time

from pipeline.cli import add_config_arguments, failures, job_config, run_attribution, run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.attribute", description=__doc__.split("\n\n")[1])
    add_config_arguments(p, help="job YAML, e.g. configs/imagenet_resnet50.yaml")
    p.add_argument(
        "--max-shards", type=int, default=None, metavar="N",
        help="process at most N shards in this run (a later run resumes the rest)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        t0 = time.monotonic()
        summary = run_attribution(job_config(args), args.max_shards)
        print(f"wall time: {time.monotonic() - t0:.1f} s")
        return failures(summary)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
