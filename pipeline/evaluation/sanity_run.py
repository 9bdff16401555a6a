"""The sanity checks at scale: the job's attribution with the trained model (its own output, run
or resumed), then one attribution job per randomization stage (``pipeline.evaluation.
randomization``), each through the driver into its own folder ``<out>/<mode>/<NNN>-<layer>``
(resumable; the stage's layers and seed are hashed with the config), and the similarity of every
stage's maps to the original's (``pipeline.metrics.similarity``, each row's M maps summed),
part by part: one shard's rows in memory at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import pyarrow as pa

from pipeline.commit import PARTS_DIR
from pipeline.config import JobConfig
from pipeline.evaluation.randomization import MODES, RandomizedAttributionTask, Stage, learnable_layers, stages
from pipeline.evaluation.table_files import write_table_files
from pipeline.io.parts import iter_part_rows, part_urls
from pipeline.metrics.similarity import METRICS, map_similarity
from pipeline.models import load_model
from pipeline.schema import restore_maps
from pipeline.storage import Storage, join

SUMMARY = "sanity_check"
_COLUMNS = ["key", "target", "maps", "map_min", "map_max", "map_height", "map_width", "error"]


def _summed(row: dict[str, Any]) -> np.ndarray:
    """A row's maps in the method's values, summed: ``[h, w]``."""
    return restore_maps(row["stored"], row["map_min"], row["map_max"]).sum(axis=0)


def compare_outputs(original_uri: str, stage_uri: str, storage: Storage = Storage(),
                    hog_cell: int = 16) -> dict[str, list[float]]:
    """metric -> the similarity of every (key, target) row good in both outputs, part by part
    (parts share their shard's name)."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for url in part_urls(stage_uri, storage):
        name = url.rstrip("/").rsplit("/", 1)[-1]
        try:
            original = {(r["key"], r["target"]): r for r in iter_part_rows(join(original_uri, PARTS_DIR, name), storage, _COLUMNS)
                        if r["error"] is None}
        except FileNotFoundError:
            continue
        for row in iter_part_rows(url, storage, _COLUMNS):
            ref = original.get((row["key"], row["target"]))
            if row["error"] is not None or ref is None:
                continue
            sims = map_similarity(_summed(ref), _summed(row), hog_cell)
            for m in METRICS:
                out[m].append(sims[m])
    return out


def top_down_layers(cfg: JobConfig, layers: Sequence[str] | None = None) -> list[str]:
    """``layers`` as given (top first), or every learnable layer of the job's model, top first.
    Raises ValueError for a name that is not a learnable layer (before any job starts)."""
    known = learnable_layers(load_model(cfg.model, "cpu").model)
    unknown = [n for n in layers or () if n not in known]
    if unknown:
        raise ValueError(f"no learnable layer named {', '.join(unknown)}; the model's: {', '.join(known)}")
    return list(layers) if layers else list(reversed(known))


def run_sanity_check(
    cfg: JobConfig,
    out_uri: str,
    *,
    modes: Sequence[str] = MODES,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    hog_cell: int = 16,
    mprt: bool = False,
    smprt_samples: int = 0,
    smprt_noise: float = 0.1,
    progress_stream: TextIO | None = None,
) -> tuple[pa.Table, list[Any], pa.Table | None]:
    """Run (or resume) the original attribution and every stage on the connected Ray cluster,
    then compare. ``mprt``: also eMPRT (and sMPRT with ``smprt_samples`` noisy copies of noise
    ``smprt_noise``, ``pipeline.evaluation.mprt_run``). Returns the table (``summary_table``), the
    jobs' summaries (original first) and eMPRT's table (None without ``mprt``). Raises what
    ``run_job`` raises, ValueError for an unknown layer or mode."""
    from pipeline.driver import run_job

    top = top_down_layers(cfg, layers)
    plan = stages(top, modes)
    summaries = [run_job(cfg, progress_stream=progress_stream)]
    storage = Storage.from_config(cfg)

    def run_stage(stage: Stage) -> Any:
        stage_cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, uri=join(out_uri, stage.folder)))
        evaluation = {"sanity_check": stage.mode, "randomized": list(stage.randomized), "seed": seed}
        task = functools.partial(RandomizedAttributionTask, layers=stage.randomized, seed=seed, evaluation=evaluation)
        return run_job(stage_cfg, progress_stream=progress_stream, task_class=task, evaluation=evaluation)

    results: list[tuple[Stage, dict[str, list[float]]]] = []
    for stage in plan:
        summaries.append(run_stage(stage))
        results.append((stage, compare_outputs(cfg.output.uri, join(out_uri, stage.folder), storage, hog_cell)))
    if mprt:
        from pipeline.evaluation.mprt_run import run_mprt

        mprt_table, more = run_mprt(cfg, out_uri, top, run_stage, seed=seed, samples=smprt_samples,
                                    magnitude=smprt_noise, progress_stream=progress_stream)
        return summary_table(results), summaries + more, mprt_table
    return summary_table(results), summaries, None


def summary_table(results: Sequence[tuple[Stage, dict[str, list[float]]]]) -> pa.Table:
    """One row per stage: ``mode, stage, layer, randomized`` (layers re-initialised), ``rows``
    compared, and per metric its mean over the rows (NaNs left out) and ``<metric>_std``."""
    rows = []
    for stage, sims in results:
        row: dict[str, Any] = {"mode": stage.mode, "stage": stage.index, "layer": stage.layer,
                               "randomized": len(stage.randomized), "rows": len(sims[METRICS[0]])}
        for m in METRICS:
            v = np.asarray(sims[m], dtype=np.float64)
            v = v[~np.isnan(v)]
            row[m] = float(v.mean()) if v.size else math.nan
            row[f"{m}_std"] = float(v.std()) if v.size else math.nan
        rows.append(row)
    fields = [("mode", pa.string()), ("stage", pa.int32()), ("layer", pa.string()), ("randomized", pa.int32()),
              ("rows", pa.int64())]
    fields += [(f"{m}{s}", pa.float64()) for m in METRICS for s in ("", "_std")]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def format_table(table: pa.Table) -> str:
    lines = [f"{'mode':<12} {'stage':>5} {'layer':<24} {'rows':>6} " + " ".join(f"{m:>15}" for m in METRICS)]
    for r in table.to_pylist():
        lines.append(f"{r['mode']:<12} {r['stage']:>5} {r['layer']:<24} {r['rows']:>6} "
                     + " ".join(f"{r[m]:15.3f}" for m in METRICS))
    lines.append("similarity of each randomized model's maps to the trained model's (1 = identical)")
    return "\n".join(lines)


def write_table(out_uri: str, table: pa.Table, storage: Storage = Storage(),
                mprt: pa.Table | None = None) -> list[str]:
    """``<out>/sanity_check.csv`` and ``.parquet`` (and ``mprt.*`` when given); returns the URLs."""
    return write_table_files(out_uri, {SUMMARY: table, **({"mprt": mprt} if mprt is not None else {})}, storage)
