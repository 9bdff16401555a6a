"""``python -m jobs.sanity_check --config configs/<name>.yaml [--set key=value ...] [--out <uri>]
[--mode cascading|independent|both] [--layers top,...,bottom] [--seed N] [--emprt] [--smprt N]``

The sanity checks (docs/evaluations.md, "Sanity checks"; Adebayo et al. 2018) of the config's attribution method: the
job itself (run or resumed), then one attribution job per randomized model (cascading: the top
learnable layer, then one more at a time down to the input; independent: one layer at a time),
each into its own folder under ``--out`` (default ``<output.uri>/sanity_check``), resumable; then
the similarity of each stage's maps to the original maps (Spearman of |map| and of the signed
map, SSIM, HOG Spearman), printed and written as ``sanity_check.csv`` / ``.parquet``. With
``--emprt`` (or ``--smprt N``), eMPRT and sMPRT (Hedström et al. 2023, docs/evaluations.md) per
method against the fully randomized model, written as ``mprt.csv`` / ``.parquet``.

Exit codes: 0 every job done; 1 a shard failed or a job could not run; 2 bad command line or config.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.cli import UsageError, add_config_arguments, job_config, ray_session, run_main
from pipeline.storage import Storage, join


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.sanity_check", description=__doc__.split("\n\n")[1])
    add_config_arguments(p, help="the attribution job's YAML")
    p.add_argument("--out", default=None, help="where the stages and the table go (default <output.uri>/sanity_check)")
    p.add_argument("--mode", choices=("cascading", "independent", "both"), default="both")
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names, top first (default: every learnable layer of the model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation (default 0)")
    p.add_argument("--hog-cell", type=int, default=16, help="HOG cell size in pixels (default 16)")
    p.add_argument("--emprt", action="store_true", help="also eMPRT against the fully randomized model")
    p.add_argument("--smprt", type=int, default=0, metavar="N",
                   help="also sMPRT (implies --emprt), maps averaged over N noisy copies: N times the method's "
                        "calls on two models (Quantus uses 50; default 0: off)")
    p.add_argument("--smprt-noise", type=float, default=0.1, help="sMPRT's noise σ over the input's range (default 0.1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        cfg = job_config(args)
        if args.hog_cell < 2:
            raise UsageError("--hog-cell must be >= 2")
        if args.smprt < 0 or args.smprt_noise < 0:
            raise UsageError("--smprt and --smprt-noise must be >= 0")
        modes = ("cascading", "independent") if args.mode == "both" else (args.mode,)
        layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
        out = args.out or join(cfg.output.uri, "sanity_check")

        from pipeline.evaluation.sanity_run import format_table, run_sanity_check, write_table

        t0 = time.monotonic()
        with ray_session(cfg.cluster.address):
            table, summaries, mprt = run_sanity_check(
                cfg, out, modes=modes, layers=layers, seed=args.seed, hog_cell=args.hog_cell,
                mprt=args.emprt or args.smprt > 0, smprt_samples=args.smprt, smprt_noise=args.smprt_noise)
        print(format_table(table))
        if mprt is not None:
            from pipeline.evaluation.mprt_run import format_table as format_mprt

            print(format_mprt(mprt))
        urls = write_table(out, table, Storage.from_config(cfg), mprt)
        print(f"tables: {', '.join(urls)}")
        print(f"wall time: {time.monotonic() - t0:.1f} s")
        failed = [s for s in summaries if not s.ok]
        for s in failed:
            print(f"error: {s.output_uri}: {len(s.failed)} failed, {len(s.pending)} unfinished shards", file=sys.stderr)
        return 1 if failed else 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
