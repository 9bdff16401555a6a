"""The report of one or more attribution outputs: ``index.html`` plus PNGs in one folder (any
fsspec URL), built from a deterministic sample of rows.

The first output is the primary one: its scan draws N rows per class (``scan.py``) and gives the
run's aggregates; the other outputs (other methods over the same data) contribute the rows with the
same ``(key, target)`` to the method comparison. Files are written as soon as they are made, so the
memory held is the sample's rows, not the run's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.report import figures
from pipeline.report import html as h
from pipeline.report import images as im
from pipeline.report.evaluations import deletion_section, mprt_section
from pipeline.report.facts import pointing_section, read_manifest, run_facts
from pipeline.report.sanity import sanity_section
from pipeline.report.scan import RunScan, locate_rows, read_rows, scan_output
from pipeline.storage import Storage, join

INDEX = "index.html"
THUMB = 128  # display width of an image panel (px)


@dataclass
class _Writer:
    """Writes the report's files under ``out`` and hands back their relative names."""

    out: str
    storage: Storage
    written: list[str] = field(default_factory=list)

    def put(self, name: str, data: bytes) -> str:
        self.storage.write_bytes(join(self.out, name), data)
        self.written.append(name)
        return name


def _class_name(c: int) -> str:
    return f"class {c}"


def _summary_section(scan: RunScan, w: _Writer, prefix: str, max_classes: int) -> str:
    """a* histograms per class and mean v_a per area, from the extremal columns of every row."""
    if scan.rows == scan.errors:
        return h.note(f"{scan.method}: no good rows ({scan.errors} error rows): no area-growth summary")
    if not scan.areas:
        return h.note(f"{scan.method}: no extremal columns (areas / scores / optimal_area): no area-growth summary")
    classes = [c for c, s in sorted(scan.classes.items()) if s.scored][:max_classes]
    names = {c: _class_name(c) for c in classes}
    hist = {c: (dict(scan.classes[c].optimal), scan.classes[c].unreached) for c in classes}
    means: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    total_sum, total_reached, total = np.zeros(len(scan.areas)), np.zeros(len(scan.areas)), 0
    for c, s in scan.classes.items():
        if s.scored and s.score_sums is not None and len(s.score_sums) == len(scan.areas):
            total_sum += s.score_sums
            total_reached += s.reached_counts
            total += s.scored
            if c in names:
                means[c] = (s.score_sums / s.scored, s.reached_counts / s.scored)
    if total:
        means[-1] = (total_sum / total, total_reached / total)
    hist_png = w.put(f"{prefix}astar_hist.png", figures.optimal_area_histograms(scan.areas, hist, names))
    mean_png = w.put(f"{prefix}area_growth.png", figures.mean_scores(scan.areas, means, names))
    shown = "" if len(classes) == len([c for c, s in scan.classes.items() if s.scored]) else f" (first {len(classes)} classes)"
    rows = [(_class_name(c), scan.classes[c].scored, *(h.fmt(v) for v in means[c][0])) for c in classes if c in means]
    if -1 in means:
        rows.append(("all", total, *(h.fmt(v) for v in means[-1][0])))
    return "".join([
        h.img(hist_png, f"Histograms of the optimal area a* per class{shown}, over {total} rows; bars per area "
              f"{', '.join(h.area(a) for a in scan.areas)}"),
        h.img(mean_png, f"Mean area-growth score v_a per area and share of rows with v_a >= 1, per class{shown} and "
              "overall; v saturates at 1.25"),
        h.table(["class", "rows", *(f"mean v_a at {h.area(a)}" for a in scan.areas)], rows),
    ])


def _image_row(row: dict[str, Any], original, meta: dict[str, Any] | None, w: _Writer, name: str) -> str:
    """One drawn row: original, one overlay per map (a* framed, v_a printed), the channel job's
    feature inversions when the row has them, area-growth bars, the pointing example."""
    what = f"{row['key']} (class {row['target']}, {row['method']})"
    cells = [h.img(w.put(f"{name}_orig.png", im.original_png(im.base_image(row, original))),
                   f"original image {what}" + ("" if original is not None else " (not readable: grey)"), "original", width=THUMB)]
    areas, scores, star = row.get("areas") or [], row.get("scores") or [], im.star_index(row)
    for i, png in enumerate(im.row_overlays(row, original)):
        if i < len(areas):
            v = f": v = {h.fmt(scores[i])}" if i < len(scores) else ""  # channel rows have no v_a
            cap = f"area {h.area(areas[i])}{v}" + (" (a*)" if i == star else "")
            alt = f"{row['method']} map at area {h.area(areas[i])} over {what}{v.replace(': v', ', v_a')}"
            alt += ", the optimal area a*" if i == star else ""
        else:
            cap, alt = f"map {i}", f"{row['method']} map {i} over {what}"
        cells.append(h.img(w.put(f"{name}_m{i}.png", png), alt, cap, star=i == star, width=THUMB))
    for column, label in (("inversion_original", "inversion of the original"),
                          ("inversion_perturbed", "inversion of the perturbed activations")):
        png = im.stored_png(row.get(column))
        if png is not None:
            cells.append(h.img(w.put(f"{name}_{column}.png", png), f"feature {label} for {what}", label, width=THUMB))
    if areas and scores:
        bars = figures.area_growth_bars(areas, scores, row.get("optimal_area"))
        star_text = f"a* = {h.area(row.get('optimal_area'))}" + ("" if row.get("optimal_area_reached") else ", not reached")
        # at the plot's own pixel size: scaled down, its tick labels were ~5 px
        cells.append(h.img(w.put(f"{name}_bars.png", bars), f"area-growth bars v_a per area for {what}; {star_text}", star_text))
    if meta:
        example = im.pointing_example(row, original, meta)
        if example is not None:
            png, hit = example
            verdict = "hit" if hit else "miss"
            cells.append(h.img(w.put(f"{name}_point.png", png), f"pointing game for {what}: {verdict} (ground truth outlined, "
                               "15 px circle around the map's maximum)", f"pointing: {verdict}", width=THUMB))
    phi0 = "" if row.get("phi0") is None else f" · clean score φ0 = {h.fmt(row['phi0'])}"
    head = f"<h3>{h.esc(row['key'])} · class {h.esc(row['target'])}{h.esc(phi0)}</h3>"
    return f'<div class="row">{head}{"".join(cells)}</div>'


def _comparison(primary: list[dict[str, Any]], others: list[tuple[RunScan, dict]], originals, w: _Writer) -> str:
    """Method comparison: one line per drawn image, one column per output (method)."""
    header = ["image", *(f"{r['method']}" for r in primary[:1]), *(s.method for s, _ in others)]
    lines = []
    for n, row in enumerate(primary):
        original = originals.get((row["shard"], row["key"]), (None, None))[0]
        what = f"{row['key']} (class {row['target']})"
        cells = [h.img(f"img/p{n}_orig.png", f"original image {what}", f"{row['key']} · class {row['target']}", width=THUMB)]
        sample = (row["shard"], row["key"], row["target"])
        columns = [(row["method"], row), *((s.method, found.get(sample)) for s, found in others)]
        for j, (method, r) in enumerate(columns):
            if r is None:
                cells.append(f"<span class=\"note\">no {h.esc(method)} row</span>")
                continue
            label = f"{method} at a* = {h.area(r.get('optimal_area'))}" if im.star_index(r) is not None else method
            src = w.put(f"img/c{n}_{j}.png", im.comparison_png(r, original))
            cells.append(h.img(src, f"{label} map over {what}", label, width=THUMB))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h.esc(c)}</th>" for c in header)
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def build_report(
    inputs: list[str],
    out: str,
    per_class: int = 4,
    max_classes: int = 20,
    storage: Storage = Storage(),
    title: str | None = None,
) -> str:
    """Write ``<out>/index.html`` and its PNGs for the outputs ``inputs`` (the first is the primary
    one; the others are compared on its drawn images). ``per_class``: rows drawn per class;
    ``max_classes``: classes shown (the smallest class ids). Returns the index's URL."""
    if not inputs:
        raise ValueError("no input output to report on")
    t0 = time.monotonic()
    w = _Writer(out, storage)
    scans = [scan_output(uri, per_class, storage) for uri in inputs]
    primary = scans[0]
    classes = sorted(c for c in primary.sample if c >= 0)[:max_classes]
    drawn = [item for c in classes for item in primary.sample[c]]
    rows = read_rows([loc for _, _, _, loc in drawn], storage)
    originals = im.load_originals(rows, storage)
    wanted = {(r["shard"], r["key"], r["target"]) for r in rows}
    others = []
    for scan in scans[1:]:
        located = locate_rows(scan.uri, wanted, storage)
        keys = list(located)
        found = dict(zip(keys, read_rows([located[k] for k in keys], storage)))
        others.append((scan, found))

    sections, nav = [], []

    def add(anchor: str, label: str, body: str) -> None:
        sections.append(h.section(anchor, label, body))
        nav.append((anchor, label))

    methods = ", ".join(s.method for s in scans)
    samples = [h.note("Bright (inferno colour map) = salient: for extremal rows the mask that keeps the region; areas "
                      "are shares of the image; the a* panel (the smallest area whose mask keeps the clean score) is "
                      "framed. φ0 (column phi0) is the model's score for the target on the clean image (the target's "
                      "logit for reward 'simple'); v is the area-growth score v_a: the masked image's score from the "
                      "fully blurred one's (phi_min, v = 0) to φ0 (v = 1), saturating at 1.25. Pointing: the ground "
                      "truth outlined, the map's maximum with its 15 px circle, green = hit")]
    for c in classes:
        samples.append(f"<h3>{h.esc(_class_name(c))}</h3>")
        for n, row in enumerate(rows):
            if int(row["target"]) == c:
                original, meta = originals.get((row["shard"], row["key"]), (None, None))
                samples.append(_image_row(row, original, meta, w, f"img/p{n}"))
    add("images", f"Sampled images ({per_class} per class, by hash of key and target)",
        "".join(samples) if rows else h.note("no good rows"))
    if others:
        add("compare", f"Method comparison: {methods}", _comparison(rows, others, originals, w))
    add("area-growth", "Area growth and a*", "".join(
        _summary_section(s, w, f"img/s{i}_", max_classes) for i, s in enumerate(scans)))
    pointing = [(s, pointing_section(s.uri, storage)) for s in scans]
    found_tables = [f"<h3>{h.esc(s.method)}</h3>{body}" for s, body in pointing if body]
    add("pointing", "Pointing game", "".join(found_tables) or h.note(
        "no pointing_game.csv|parquet beside the outputs (python -m jobs.pointing_game writes them)"))
    deletion = deletion_section(scans, rows, w.put, storage)
    if deletion is not None:
        add("deletion", "Deletion / insertion, SRG and ROAD", deletion)
    sanity = sanity_section(primary.uri, rows, originals, w.put, THUMB, storage)
    if sanity is not None:
        add("sanity", "Sanity checks (model parameter randomization)", sanity)
    mprt = mprt_section(scans, storage)
    if mprt is not None:
        add("mprt", "eMPRT and sMPRT", mprt)
    channel_rows = [r for r in rows if r.get("channel_masks") is not None]
    if channel_rows:
        add("channels", "Channel attribution", h.note(
            f"{len(channel_rows)} drawn rows at layer {channel_rows[0].get('layer')}: the channel-saliency overlay per area "
            "(above, per image) beside the inversions of the original and of the perturbed activations where present"))
    heads = [f"<h3>{h.esc(s.method)}: {h.esc(s.uri)}</h3>" if len(scans) > 1 else "" for s in scans]
    add("facts", "Run facts", "".join(
        head + run_facts(s, read_manifest(s.uri, storage)) for head, s in zip(heads, scans)))
    footer = h.note(f"built in {time.monotonic() - t0:.1f} s from {sum(len(s.parts) for s in scans)} parts, "
                    f"{sum(s.rows for s in scans)} rows; {len(rows)} rows drawn; colour map: inferno")
    sections.append(footer)
    index = h.page(title or f"Saliency report: {methods}", nav, sections)
    w.put(INDEX, index.encode())
    return join(out, INDEX)
