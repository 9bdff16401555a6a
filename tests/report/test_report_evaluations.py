"""The report's tables of the evaluation jobs per method, on synthetic outputs of two methods
written with the real schemas (no Ray): the pointing game's energy column, deletion / insertion
with SRG and ROAD (and the curves of drawn rows read from the evaluation's parts), eMPRT / sMPRT
from the sanity check's table; each section absent when no output has its table. The page opens
whole in headless Chromium where it is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.evaluation.deletion_table import summarize, summary_table, write_summary
from pipeline.evaluation.deletion_task import EVAL_SCHEMA
from pipeline.evaluation.mprt_run import summary_table as mprt_table
from pipeline.evaluation.mprt_task import MPRT_SCHEMA
from pipeline.evaluation.pointing_run import PartResult
from pipeline.evaluation.pointing_table import write_tables
from pipeline.evaluation.sanity_run import write_table
from pipeline.metrics.road import FRACTIONS
from pipeline.report import build_report
from pipeline.report.evaluations import deletion_section, mprt_section
from pipeline.report.scan import scan_output
from pipeline.storage import Storage
from tests.report.chromium import check_page, chromium_binary
from tests.report.synthetic import synthetic_rows, write_output


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def _good_rows(out: Path) -> list[dict]:
    t = pq.read_table(out / "parts", columns=["shard", "key", "target", "method", "error"]).to_pylist()
    return [r for r in t if r["error"] is None]


def _deletion(out: Path, offset: float) -> None:
    """A deletion job's output under ``out/deletion_insertion``: parts with curves and ROAD, its table."""
    folder = out / "deletion_insertion"
    (folder / "parts").mkdir(parents=True)
    n = 8
    rows = [{**r, "step": 2, "n_steps": n, "deletion_auc": 0.2 + offset, "insertion_auc": 0.6, "srg": 0.4 - offset,
             "deletion_curve": np.linspace(1, 0, n + 1).tolist(), "insertion_curve": np.linspace(0, 1, n + 1).tolist(),
             "road_morf_auc": 0.3, "road_lerf_auc": 0.7, "road_morf_curve": [0.5] * len(FRACTIONS),
             "road_lerf_curve": [0.9] * len(FRACTIONS), "deletion_substrate": "blur", "error": None, "model": "m"}
            for r in _good_rows(out)]
    pq.write_table(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA), folder / "parts" / "part-000000.parquet")
    write_summary(str(folder), summary_table(summarize(str(folder)), "blur"))


def _mprt(out: Path, emprt: float) -> None:
    """The sanity check's eMPRT / sMPRT parts and table under ``out/sanity_check``."""
    folder = out / "sanity_check"
    (folder / "mprt" / "parts").mkdir(parents=True)
    rows = [{"key": r["key"], "shard": r["shard"], "method": r["method"], "model": "m", "target": r["target"],
             "explanation_entropy": 2.0, "explanation_entropy_random": 2.0 * (1 + emprt), "output_entropy": 0.5,
             "output_entropy_random": 1.0, "emprt": emprt, "explanation_rise": 1 + emprt, "model_rise": 2.0,
             "emprt_vs_model": (1 + emprt) / 2, "smprt": 0.25, "error": None} for r in _good_rows(out)]
    pq.write_table(pa.Table.from_pylist(rows, schema=MPRT_SCHEMA), folder / "mprt" / "parts" / "part-000000.parquet")
    table = pa.table({"mode": ["cascading"], "stage": pa.array([0], pa.int32()), "layer": ["fc"],
                      "randomized": pa.array([1], pa.int32()), "rows": [len(rows)],
                      **{m: [0.5] for m in ("spearman_abs", "spearman_signed", "ssim", "hog_spearman")},
                      **{f"{m}_std": [0.1] for m in ("spearman_abs", "spearman_signed", "ssim", "hog_spearman")}})
    write_table(str(folder), table, Storage(), mprt_table(str(folder / "mprt"), Storage(), samples=3, magnitude=0.1))


def test_the_report_shows_the_new_metrics_per_method(tmp_path: Path) -> None:
    outs = [write_output(tmp_path / m, synthetic_rows(20, classes=2), [np.arange(20)], method=m)
            for m in ("extremal", "gradient")]
    scans = [scan_output(str(o)) for o in outs]
    assert deletion_section(scans, [], lambda name, data: name) is None and mprt_section(scans) is None  # no tables yet

    result = PartResult(rows=4)
    for c, hit, share in ((0, True, 0.75), (1, False, 0.25)):
        result.tally("extremal", "all").add(c, hit)
        result.energy("extremal", "all").add(c, share)
    write_tables(str(outs[0] / "pointing_game"), result)
    for k, out in enumerate(outs):
        _deletion(out, 0.1 * k)
        _mprt(out, 0.5 + k)
    index = Path(build_report([str(o) for o in outs], str(tmp_path / "r"), per_class=1))
    page = index.read_text()

    pointing = _section(page, "pointing")
    assert "<th>energy % (class mean)</th>" in pointing and "<td>50</td>" in pointing  # (75 + 25) / 2
    deletion = _section(page, "deletion")
    for head in ("deletion_auc", "insertion_auc", "srg", "road_morf_auc", "road_lerf_auc"):
        assert f"<th>{head}</th>" in deletion
    assert "<td>extremal</td>" in deletion and "<td>gradient</td>" in deletion and "<td>0.3</td>" in deletion
    assert "deletion_curves.png" in deletion and (tmp_path / "r" / "img" / "deletion_curves.png").stat().st_size > 0
    mprt = _section(page, "mprt")
    n = len(_good_rows(outs[0]))
    assert f"<td>extremal</td><td>{n}</td><td>0.5</td>" in mprt and f"<td>gradient</td><td>{n}</td><td>1.5</td>" in mprt
    assert "<th>smprt</th>" in mprt and "<td>0.25</td><td>0</td>" in mprt
    if chromium_binary() is not None:
        from tests.report.test_report_browser import _assert_page_is_whole

        _assert_page_is_whole(index, check_page(index, tmp_path / "report.png"))
