"""The report's sanity-check section (the supplement's figures 10-13): the similarity table and
curves of ``jobs.sanity_check`` (written under ``<output>/sanity_check``), and a grid of the drawn
images' maps under each cascading randomization stage, read from the stages' own outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.evaluation.randomization import Stage
from pipeline.metrics.similarity import METRICS
from pipeline.report import figures
from pipeline.report import html as h
from pipeline.report import images as im
from pipeline.report.facts import read_table_beside
from pipeline.report.scan import locate_rows, read_rows
from pipeline.storage import Storage, join

FOLDER = "sanity_check"  # jobs.sanity_check's default --out under the output
GRID_ROWS = 4  # drawn images shown in the grid


def sanity_section(
    uri: str,
    rows: list[dict[str, Any]],
    originals: dict[str, Any],
    put: Callable[[str, bytes], str],
    thumb: int,
    storage: Storage = Storage(),
) -> str | None:
    """HTML of the section, or None when ``<uri>/sanity_check`` holds no table. ``rows``: the
    drawn rows of the trained model; ``put(name, png) -> src`` writes a file of the report."""
    found = read_table_beside(join(uri, FOLDER), FOLDER, storage)
    if found is None:
        return None
    url, table = found
    stages = table.to_pylist()
    cols = ["mode", "stage", "layer", "rows", *METRICS]
    parts = [h.table(cols, [[h.fmt(s[c]) if c in METRICS else s[c] for c in cols] for s in stages]),
             h.note(f"from {url}: mean similarity of each randomized model's maps to the trained model's "
                    "(1 = identical; a method that explains the model falls as its layers are randomized)")]
    curves = figures.similarity_curves(stages, METRICS)
    parts.append(h.img(put("img/sanity_curves.png", curves), "similarity to the trained model's maps per "
                       "randomization stage, one line per metric, one panel per mode", "similarity per stage"))
    parts.append(_grid(uri, rows[:GRID_ROWS], originals, [s for s in stages if s["mode"] == "cascading"], put, thumb,
                       storage))
    return "".join(parts)


def _grid(uri, rows, originals, stages, put, thumb, storage) -> str:
    """One line per drawn image: the trained model's map, then each cascading stage's."""
    if not rows or not stages:
        return ""
    wanted = {(r["shard"], r["key"], r["target"]) for r in rows}
    by_stage = []
    for s in sorted(stages, key=lambda s: s["stage"]):
        folder = Stage(s["mode"], int(s["stage"]), s["layer"], ()).folder
        located = locate_rows(join(uri, FOLDER, folder), wanted, storage)
        keys = list(located)
        by_stage.append((s, dict(zip(keys, read_rows([located[k] for k in keys], storage)))))
    header = ["trained", *(f"+ {s['layer']}" for s, _ in by_stage)]
    lines = []
    for n, row in enumerate(rows):
        original = originals.get((row["shard"], row["key"]), (None, None))[0]
        what = f"{row['key']} (class {row['target']})"
        cells = [h.img(put(f"img/sanity{n}_0.png", im.comparison_png(row, original)), f"trained model's map of {what}",
                       width=thumb)]
        for j, (s, found) in enumerate(by_stage, 1):
            r = found.get((row["shard"], row["key"], row["target"]))
            cells.append(h.note("no row") if r is None else h.img(
                put(f"img/sanity{n}_{j}.png", im.comparison_png(r, original)),
                f"map of {what} with the layers down to {s['layer']} randomized", width=thumb))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h.esc(c)}</th>" for c in header)
    return f"<h3>Cascading randomization, top layer first</h3><table><tr>{head}</tr>{''.join(lines)}</table>"

