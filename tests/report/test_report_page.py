"""What the report's page says, on synthetic outputs written with the real schema (no Ray, no
browser): counts equal to a direct count of the Parquet, an errors-only output named by its
method, an empty pointing table that says why, one format for areas, captions and explanations,
and plots that are readable at the size the page shows them."""

from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib.text
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation.pointing_run import PartResult
from pipeline.evaluation.pointing_table import write_tables
from pipeline.report import build_report, figures
from pipeline.report.scan import scan_output
from tests.report.synthetic import AREAS, synthetic_rows, write_output


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def _facts(page: str) -> dict[str, str]:
    """The run facts table (the first one of the facts section): fact -> value."""
    return dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", _section(page, "facts")))


def _report(inputs: list[Path], out: Path, per_class: int = 2) -> str:
    index = build_report([str(p) for p in inputs], str(out), per_class=per_class)
    return Path(index).read_text()


def test_counts_equal_a_direct_count_and_a_null_target_is_no_class(tmp_path: Path) -> None:
    """4 classes, error rows among them, one error row whose target is null: 'classes 4', and
    rows / error rows as the Parquet counts them."""
    cols = synthetic_rows(60, classes=4, error_every=7)
    cols["no_target"] = np.zeros(60, bool)
    cols["no_target"][13] = True  # an error row (13 % 7 == 6) whose label did not fit
    out = write_output(tmp_path / "run", cols, np.array_split(np.arange(60), 3))
    table = pq.read_table(out / "parts", columns=["target", "error"])
    assert table.column("target").null_count == 1
    scan = scan_output(str(out))
    assert sorted(c for c, s in scan.classes.items() if s.rows) == [0, 1, 2, 3] and scan.untargeted == 1
    facts = _facts(_report([out], tmp_path / "r"))
    errors = table.column("error").drop_null()
    assert facts["rows"] == str(table.num_rows) and facts["error rows"] == str(len(errors))
    assert facts["classes"] == str(len(set(table.column("target").drop_null().to_pylist()))) == "4"
    assert facts["rows without a target (error rows)"] == "1"
    assert facts["method"] == f"extremal ({table.num_rows} rows)"


def test_an_errors_only_output_names_its_method_and_counts(tmp_path: Path) -> None:
    cols = synthetic_rows(12, classes=3, error_every=1)
    out = write_output(tmp_path / "run", cols, [np.arange(12)], method="grad_cam")
    page = _report([out], tmp_path / "r")
    assert "<title>Saliency report: grad_cam</title>" in page and "?" not in re.search(r"<h1>(.*?)</h1>", page)[1]
    facts = _facts(page)
    assert facts["method"] == "grad_cam (12 rows)" and facts["rows"] == facts["error rows"] == "12"
    assert facts["classes"] == "3"
    assert "grad_cam: no good rows (12 error rows)" in _section(page, "area-growth")
    assert "no good rows" in _section(page, "images")


def _pointing_result(pairs: bool) -> PartResult:
    result = PartResult(rows=20, errors=5, no_ground_truth=15)
    if pairs:
        result.rows += 4
        for method in ("extremal", "center"):
            tally = result.tally(method, "all")
            for c, hit in ((0, True), (0, True), (0, False), (1, False)):
                tally.add(c, hit)
    return result


def test_an_empty_pointing_table_says_why(tmp_path: Path) -> None:
    out = write_output(tmp_path / "run", synthetic_rows(20), [np.arange(20)])
    write_tables(str(out / "pointing_game"), _pointing_result(pairs=False))
    section = _section(_report([out], tmp_path / "r"), "pointing")
    assert "<th>" not in section  # no empty header
    assert "no (image, class) pair was scored" in section
    assert "5 error rows" in section and "15 pairs without ground truth" in section


def test_the_pointing_accuracy_is_said_to_be_a_class_mean(tmp_path: Path) -> None:
    out = write_output(tmp_path / "run", synthetic_rows(20), [np.arange(20)])
    write_tables(str(out / "pointing_game"), _pointing_result(pairs=True))
    section = _section(_report([out], tmp_path / "r"), "pointing")
    # class 0: 2/3, class 1: 0/1 -> mean 33.33 %, not 2/4 pairs = 50 %
    assert "<th>accuracy % (class mean)</th>" in section and "<td>33.33</td>" in section
    assert "then the mean over the classes" in section and "15 pairs without ground truth" in section


def test_areas_have_one_format_and_rows_explain_phi0(tmp_path: Path) -> None:
    cols = synthetic_rows(40, classes=2)
    out = write_output(tmp_path / "run", cols, [np.arange(40)])
    page = _report([out], tmp_path / "r")
    percents = [f"{100 * float(a):.3g}%" for a in AREAS]
    assert _facts(page)["areas"] == ", ".join(percents)
    assert all(f"area {p}: v = " in page and f"mean v_a at {p}" in page for p in percents)
    assert "a* = 20%" in page or "a* = 10%" in page or "a* = 5%" in page
    # no area written as a fraction anywhere a reader sees it
    assert not re.search(r"(area|a\*|at) =? ?0\.\d", re.sub(r"<[^>]+>", " ", page))
    heads = re.findall(r"<h3>(img\d+ · class \d+[^<]*)</h3>", page)
    assert len(heads) == 4 and all("clean score φ0 = 1" in head for head in heads)
    assert "φ0 (column phi0) is the model's score for the target on the clean image" in html.unescape(page)


def test_comparison_rows_are_captioned_with_key_and_class(tmp_path: Path) -> None:
    cols = synthetic_rows(40, classes=2)
    a = write_output(tmp_path / "a", cols, [np.arange(40)])
    b = write_output(tmp_path / "b", cols, [np.arange(40)], method="gradient")
    compare = _section(_report([a, b], tmp_path / "r"), "compare")
    lines = compare.split("<tr>")[2:]
    assert len(lines) == 4
    for line in lines:
        key, target = re.search(r'alt="original image (img\d+) \(class (\d+)\)"', line).groups()
        assert f"<figcaption>{key} · class {target}</figcaption>" in line


def _texts(fig) -> list[matplotlib.text.Text]:
    fig.canvas.draw()  # the y tick labels exist once drawn
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]


def _figures():
    areas = [float(a) for a in AREAS]
    names = {c: f"class {c}" for c in range(3)}
    means = {c: (np.array([0.2, 0.5, 0.9]), np.zeros(3)) for c in (2, -1, 0, 1)}
    hist = {c: ({0.1: 3, 0.2: 2}, 1) for c in (2, 0, 1)}
    return {
        "bars": figures.area_growth_bars_figure(areas, [0.3, 0.8, 1.1], 0.2),
        "hist": figures.optimal_area_histograms_figure(areas, hist, names),
        "mean": figures.mean_scores_figure(areas, means, names),
    }


@pytest.mark.parametrize("name", ["bars", "hist", "mean"])
def test_no_plot_text_is_under_10_px(name: str) -> None:
    fig = _figures()[name]
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() * figures.DPI / 72 < 10]
    assert not small
    assert fig.dpi == figures.DPI


def test_plots_are_shown_at_their_own_size(tmp_path: Path) -> None:
    out = write_output(tmp_path / "run", synthetic_rows(40, classes=2), [np.arange(40)])
    page = _report([out], tmp_path / "r")
    plots = re.findall(r'<img src="img/[^"]*(?:bars|astar_hist|area_growth)\.png"[^>]*>', page)
    assert len(plots) == 4 + 2 and not [p for p in plots if " width=" in p]


def test_the_share_axis_is_0_to_100_when_no_row_reaches_1_and_the_legend_is_in_class_order() -> None:
    fig = _figures()["mean"]
    left, right = fig.axes
    _texts(fig)
    lo, hi = right.get_ylim()
    shown = [t for t in right.get_yticks() if lo <= t <= hi]
    assert min(shown) == 0 and max(shown) == 100 and lo <= 0 and hi >= 100
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["class 0", "class 1", "class 2", "all"]
    hist = _figures()["hist"]
    assert [ax.get_title() for ax in hist.axes if ax.get_title()] == [f"class {c}: 5 rows" for c in range(3)]


@pytest.fixture(scope="module")
def real_outputs(tmp_path_factory) -> dict[str, Path]:
    """Real shards through the real task (no Ray): ``mixed`` (extremal: 8 good rows of 4 classes,
    an error row whose label does not fit int32 and an undecodable image: both without a target),
    ``errors`` (gradient: undecodable images only)."""
    from pipeline.models import load_model
    from pipeline.tasks import process_shard
    from tests.pipeline.conftest import tiny_config
    from tests.shard_factory import image_samples, write_shard

    root = tmp_path_factory.mktemp("real")
    bad = [{"__key__": f"bad_{i}", "jpg": b"not an image", "cls": i} for i in range(3)]
    huge = {**image_samples(1, 1)[0], "__key__": "huge_label", "cls": 2**31}
    mixed = write_shard(root / "mixed-000000.tar", [*image_samples(0, 8), huge, bad[0]])
    errors = write_shard(root / "errors-000000.tar", bad)
    cfg = tiny_config(mixed, str(root / "mixed"))
    model = load_model(cfg.model)
    process_shard(mixed, cfg, model)
    process_shard(errors, tiny_config(errors, str(root / "errors"), "method.name=gradient"), model)
    return {"mixed": root / "mixed", "errors": root / "errors", "root": root}


def test_a_real_output_with_null_targets_counts_4_classes(real_outputs) -> None:
    table = pq.read_table(real_outputs["mixed"] / "parts")
    assert table.column("target").null_count == 2 and table.column("error").null_count == 8
    facts = _facts(_report([real_outputs["mixed"]], real_outputs["root"] / "r_mixed"))
    assert (facts["rows"], facts["error rows"], facts["classes"]) == ("10", "2", "4")
    assert facts["method"] == "extremal (10 rows)" and facts["rows without a target (error rows)"] == "2"


def test_a_real_errors_only_output_names_its_method(real_outputs) -> None:
    page = _report([real_outputs["errors"]], real_outputs["root"] / "r_errors")
    assert "<title>Saliency report: gradient</title>" in page
    facts = _facts(page)
    assert facts["method"] == "gradient (3 rows)" and facts["rows"] == facts["error rows"] == "3"
    assert facts["classes"] == "0" and facts["rows without a target (error rows)"] == "3"
