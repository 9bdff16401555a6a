"""eMPRT / sMPRT in the sanity check (docs/evaluations.md, "eMPRT and sMPRT"): the fully randomized
model is the cascade's last stage (every listed layer re-initialised; run here when the cascade
was not), sMPRT's denoised outputs of the trained and of that model under
``<out>/smprt/n<N>-noise<σ>/``, the per-row scores under ``<out>/mprt/`` (``mprt-smprt-n<N>-noise<σ>/``
with sMPRT; ``pipeline.evaluation.mprt_task``), each a resumable job through the driver; then the
per-method table ``<out>/mprt.csv`` / ``.parquet`` (the latest run's), read part by part.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import JobConfig
from pipeline.evaluation.mprt_task import EMPRT_COLUMNS, MPRTSettings, MPRTTask, SmoothedAttributionTask
from pipeline.evaluation.randomization import Stage, stages
from pipeline.io.parts import iter_part_batches, output_part_urls
from pipeline.storage import Storage, join

SUMMARY = "mprt"
# Means per method; each with its standard deviation for the two scores.
_MEANS = ("explanation_entropy", "explanation_entropy_random", "output_entropy", "output_entropy_random",
          *EMPRT_COLUMNS, "smprt")


def fully_randomized(top: Sequence[str]) -> Stage:
    """The stage with every layer of ``top`` re-initialised: the cascade's last."""
    return stages(top, ("cascading",))[-1]


def run_mprt(
    cfg: JobConfig, out_uri: str, top: Sequence[str], run_stage: Callable[[Stage], Any], *, seed: int = 0,
    samples: int = 0, magnitude: float = 0.1, progress_stream: Any = None,
) -> tuple[pa.Table, list[Any]]:
    """Run (or resume) what eMPRT (and, with ``samples`` > 0, sMPRT) needs and score it;
    ``run_stage``: the sanity check's own runner of a randomized stage (returns its summary).
    Returns the per-method table (``summary_table``) and the jobs' summaries."""
    from pipeline.driver import run_job

    def at(uri: str) -> JobConfig:
        return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, uri=uri))

    full = fully_randomized(top)
    summaries = [run_stage(full)]
    # Folders named by sMPRT's settings (hashed with the config): another N or noise is another output, not a conflict.
    tag = f"n{samples}-noise{magnitude:g}"
    smooth = {"original": join(out_uri, "smprt", tag, "original"), "random": join(out_uri, "smprt", tag, full.folder)}
    if samples > 0:
        for uri, layers in ((smooth["original"], ()), (smooth["random"], full.randomized)):
            evaluation = {"smprt": samples, "noise": magnitude, "randomized": list(layers), "seed": seed}
            task = functools.partial(SmoothedAttributionTask, layers=layers, samples=samples, magnitude=magnitude,
                                     seed=seed, evaluation=evaluation)
            summaries.append(run_job(at(uri), progress_stream=progress_stream, task_class=task, evaluation=evaluation))
    settings = MPRTSettings(cfg.output.uri, join(out_uri, full.folder), full.randomized, seed,
                            smooth["original"], smooth["random"], samples, magnitude)
    uri = join(out_uri, SUMMARY if samples <= 0 else f"{SUMMARY}-smprt-{tag}")
    summaries.append(run_job(at(uri), progress_stream=progress_stream, evaluation=settings.hashed(),
                             task_class=functools.partial(MPRTTask, settings=settings)))
    return summary_table(uri, Storage.from_config(cfg), samples, magnitude), summaries


def summary_table(uri: str, storage: Storage = Storage(), samples: int = 0, magnitude: float = 0.1) -> pa.Table:
    """One row per method over the rows under ``uri``: ``rows``, ``errors``, ``scored`` (rows
    with an eMPRT score), the mean of each of ``_MEANS`` over the rows that have it (NaN: none),
    ``emprt_std`` and ``smprt_std``, ``smprt_rows``, and sMPRT's ``samples`` and ``noise``."""
    sums: dict[str, dict[str, list[float]]] = {}  # method -> column -> [n, sum, sum of squares]
    counts: dict[str, list[int]] = {}  # method -> [rows, errors]
    for url in output_part_urls(uri, storage):
        for batch in iter_part_batches(url, storage, ["method", "error", *_MEANS]):
            cols = batch.to_pydict()
            for j, method in enumerate(cols["method"]):
                m = method or ""
                c = counts.setdefault(m, [0, 0])
                c[0] += 1
                c[1] += cols["error"][j] is not None
                for col in _MEANS:
                    v = cols[col][j]
                    if v is not None and not math.isnan(v):
                        t = sums.setdefault(m, {}).setdefault(col, [0, 0.0, 0.0])
                        t[0], t[1], t[2] = t[0] + 1, t[1] + v, t[2] + v * v

    def mean(m: str, col: str) -> float:
        n, s, _ = sums.get(m, {}).get(col, [0, 0.0, 0.0])
        return s / n if n else math.nan

    def std(m: str, col: str) -> float:
        n, s, q = sums.get(m, {}).get(col, [0, 0.0, 0.0])
        return float(np.sqrt(max(0.0, q / n - (s / n) ** 2))) if n else math.nan

    rows = [{"method": m, "rows": c[0], "errors": c[1], "scored": int(sums.get(m, {}).get("emprt", [0])[0]),
             **{col: mean(m, col) for col in _MEANS}, "emprt_std": std(m, "emprt"), "smprt_std": std(m, "smprt"),
             "smprt_rows": int(sums.get(m, {}).get("smprt", [0])[0]), "samples": samples, "noise": magnitude}
            for m, c in sorted(counts.items())]
    f64 = pa.float64()
    schema = pa.schema([("method", pa.string()), ("rows", pa.int64()), ("errors", pa.int64()), ("scored", pa.int64()),
                        *[(col, f64) for col in _MEANS], ("emprt_std", f64), ("smprt_std", f64),
                        ("smprt_rows", pa.int64()), ("samples", pa.int32()), ("noise", f64)])
    return pa.Table.from_pylist(rows, schema=schema)


def format_table(table: pa.Table) -> str:
    lines = [f"{'method':<24} {'rows':>6} {'eMPRT':>8} {'eMPRT/model':>12} {'sMPRT':>8}"]
    for r in table.to_pylist():
        lines.append(f"{r['method']:<24} {r['scored']:>6} {r['emprt']:8.3f} {r['emprt_vs_model']:12.3f} {r['smprt']:8.3f}")
    lines.append("eMPRT: rise of the explanation's histogram entropy, trained -> fully randomized model (higher: "
                 "more sensitive); eMPRT/model: that rise over the output's; sMPRT: Spearman of the denoised "
                 "maps (lower: more sensitive; NaN without --smprt)")
    return "\n".join(lines)
