"""What the report reads beside an output besides its parts: the manifest (config, code version,
shards) and any evaluation tables (the pointing game's ``pointing_game*.csv|parquet``)."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.commit import MANIFEST_JSON
from pipeline.evaluation.pointing_table import COUNTS, PER_CLASS, SUMMARY
from pipeline.report import html as h
from pipeline.report.scan import RunScan
from pipeline.storage import Storage, join

# Where jobs.pointing_game writes by default, and the output folder itself (a --out beside it).
POINTING_DIRS = ("pointing_game", "")
MAX_SHARDS_LISTED = 20


def read_manifest(uri: str, storage: Storage = Storage()) -> dict[str, Any] | None:
    return storage.read_json(join(uri, MANIFEST_JSON))


def read_table_beside(uri: str, name: str, storage: Storage = Storage()) -> tuple[str, pa.Table] | None:
    """The first ``<uri>/[pointing_game/]<name>.parquet|csv`` that exists: (its URL, the table)."""
    for folder in POINTING_DIRS:
        for ext in ("parquet", "csv"):
            url = join(uri, *(p for p in (folder, f"{name}.{ext}") if p))
            fs, path = storage.url_to_fs(url)
            try:
                data = fs.cat_file(path)
            except (FileNotFoundError, IsADirectoryError):
                continue
            reader = pq.read_table if ext == "parquet" else pacsv.read_csv
            return url, reader(io.BytesIO(data))
    return None


def pointing_section(uri: str, storage: Storage = Storage()) -> str | None:
    """The pointing-game tables found beside ``uri`` as HTML (None when there are none)."""
    found = read_table_beside(uri, SUMMARY, storage)
    if found is None:
        return None
    url, summary = found
    counts = read_table_beside(uri, COUNTS, storage)
    unscored = _unscored(counts[1].to_pylist()[0] if counts is not None and counts[1].num_rows else None)
    if summary.num_rows == 0:
        return h.note(f"no (image, class) pair was scored: {unscored or 'python -m jobs.pointing_game prints why'} "
                      f"(from {url})")
    cols = [c for c in ("method", "subset", "accuracy", "energy", "hits", "misses", "pairs", "classes")
            if c in summary.column_names]
    # energy is NaN for the centre baseline (no map): a dash
    rows = [[h.fmt(None if r[c] != r[c] else r[c], 4) if c in ("accuracy", "energy") else r[c] for c in cols]
            for r in summary.select(cols).to_pylist()]
    names = {"accuracy": "accuracy % (class mean)", "energy": "energy % (class mean)"}
    parts = [h.table([names.get(c, c) for c in cols], rows),
             h.note(f"from {url}. accuracy %: hits / (hits + misses) per class, then the mean over the classes "
                    "(TorchRay's protocol), so it is not hits / pairs; a hit: a ground-truth pixel within 15 px of the "
                    "map's maximum. energy %: the share of the map's positive values inside the ground truth, "
                    "averaged per class then over the classes. 'center' is the centre baseline on the same pairs."
                    + (f" Not scored: {unscored}." if unscored else ""))]
    per_class = read_table_beside(uri, PER_CLASS, storage)
    if per_class is not None:
        t = per_class[1]
        shown = t.slice(0, 200).to_pylist()
        parts.append("<details><summary>per class</summary>" + h.table(
            t.column_names, [[h.fmt(r[c], 4) for c in t.column_names] for r in shown]) + "</details>")
    return "".join(parts)


def _unscored(counts: dict[str, Any] | None) -> str:
    """The pointing game's rows not scored, by reason, as a phrase ('' when none or unknown)."""
    if not counts:
        return ""
    reasons = [(counts.get("error_rows"), "error rows"), (counts.get("unannotated"), "rows without annotations"),
               (counts.get("no_ground_truth"), "pairs without ground truth (or all difficult)")]
    said = [f"{n} {what}" for n, what in reasons if n]
    return f"of {counts.get('rows')} rows, " + ", ".join(said) if said else ""


def run_facts(scan: RunScan, manifest: dict[str, Any] | None) -> str:
    """Run facts of one output: counts, config hash, code version, schema, shards (the failed ones
    with their reasons), error rows with reasons, and the resolved config."""
    parts = [h.table(["fact", "value"], [
        ("output", scan.uri), ("method", ", ".join(f"{m} ({n} rows)" for m, n in scan.methods.items()) or "-"),
        ("parts", len(scan.parts)), ("rows", scan.rows), ("error rows", scan.errors),
        ("classes", len([c for c, s in scan.classes.items() if s.rows])),
    ] + ([("rows without a target (error rows)", scan.untargeted)] if scan.untargeted else []) + [
        ("areas", ", ".join(h.area(a) for a in scan.areas) if scan.areas else "-"),
    ] + ([] if manifest is None else [
        ("config hash", manifest.get("config_hash", "-")), ("code version", manifest.get("code_version", "-")),
        ("schema version", manifest.get("schema_version", "-")),
        ("shards", ", ".join(f"{k}: {v}" for k, v in (manifest.get("summary") or {}).items())),
    ]))]
    if manifest is None:
        parts.append(h.note("no manifest.json beside the parts"))
    else:
        shards = manifest.get("shards") or {}
        failed = [(u, s.get("attempts"), s.get("error", "")) for u, s in shards.items() if s.get("status") == "failed"]
        if failed:
            parts.append("<h3>failed shards</h3>" + h.table(["shard", "attempts", "reason"], failed[:200]))
        listed = list(shards.items())[:MAX_SHARDS_LISTED]
        parts.append("<details><summary>shards" + (f" (first {len(listed)} of {len(shards)})" if len(shards) > len(listed)
                                                   else "") + "</summary>" + h.table(
            ["shard", "status", "rows", "errors", "attempts", "seconds"],
            [(u, s.get("status"), s.get("rows"), s.get("errors"), s.get("attempts"), s.get("seconds")) for u, s in listed],
        ) + "</details>")
        parts.append(h.details("resolved config", manifest.get("config", {})))
    if scan.errors:
        parts.append("<h3>error rows</h3>" + h.table(["reason", "rows"], scan.error_reasons.most_common(20)))
        parts.append(h.table(["key", "shard", "error"], scan.error_rows)
                     + h.note(f"{len(scan.error_rows)} of {scan.errors} error rows listed"))
    return "".join(parts)
