"""The report of real outputs opened in headless Chromium (started and ended by the test): the
demo's own report (jobs.demo writes it) and a report of two methods over the same images.
Every image must load (naturalWidth > 0) with alt text, every link resolve, no console error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.report.chromium import PageCheck, check_page, chromium_binary

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="needs chromium on PATH (.ci/run installs it)")


@pytest.fixture(scope="module")
def demo_runs(demo_model_and_data, ray_cluster, tmp_path_factory) -> dict[str, object]:
    """The demo (shortened, ``jobs.demo``) and jobs.attribute with gradient on the same shards.
    Returns the output folders and what the extremal run printed."""
    import contextlib
    import io

    from jobs.attribute import main as attribute
    from jobs.demo import main as demo

    assets = demo_model_and_data.assets
    root = tmp_path_factory.mktemp("report")
    common = ["--set", f"input.shards={assets.root}/shards/demo-{{000000..000003}}.tar",
              "--set", f"model.checkpoint={assets.checkpoint}", "--set", "extremal.max_iter=5"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert demo(["--config", "configs/demo.yaml", *common, "--set", f"output.uri={root / 'extremal'}"]) == 0
    assert attribute(["--config", "configs/methods/demo_gradient.yaml", *common, "--set", f"output.uri={root / 'gradient'}"]) == 0
    return {"extremal": root / "extremal", "gradient": root / "gradient", "printed": printed.getvalue(), "root": root}


def _assert_page_is_whole(index: Path, check: PageCheck) -> None:
    assert check.images, "no image on the page"
    broken = [i["src"] for i in check.images if not i["complete"] or i["naturalWidth"] <= 0]
    assert not broken, f"images not loaded: {broken[:5]}"
    assert all((i["alt"] or "").strip() for i in check.images), "an image without alt text"
    for href in check.links:
        if href.startswith("#"):
            assert href[1:] in check.ids, f"dangling anchor {href}"
        else:
            assert not urlparse(href).scheme, f"a link out of the report: {href}"
            assert (index.parent / href).exists(), f"broken link {href}"
    # every image is a relative file beside index.html: the folder opens from disk or a bucket
    assert all(not urlparse(i["src"]).scheme and (index.parent / i["src"]).is_file() for i in check.images)
    assert not check.errors, check.errors


def test_the_demo_writes_its_report_and_it_opens_in_chromium(demo_runs, tmp_path: Path) -> None:
    last = demo_runs["printed"].strip().splitlines()[-1]
    index = demo_runs["extremal"] / "report" / "index.html"
    assert last == f"report: {index}"
    shot = tmp_path / "report.png"
    check = check_page(index, shot)
    _assert_page_is_whole(index, check)
    assert shot.stat().st_size > 10_000
    if os.environ.get("REPORT_SCREENSHOT"):  # to refresh the README's picture
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
    text = index.read_text()
    # 4 classes x 4 drawn rows: original + 3 areas (one framed as a*) + bars + pointing example each
    assert text.count('class="star"') == 16 and text.count("(a*)") == 16
    assert text.count("pointing: hit") + text.count("pointing: miss") == 16
    assert "v = " in text and "pointing_game.parquet" in text and "<td>center</td>" in text
    assert "git:" in text or "unknown" in text  # the manifest's code version


def test_a_report_of_two_methods_compares_them_per_image(demo_runs) -> None:
    from jobs.report import main as report

    out = demo_runs["root"] / "both"
    assert report(["--input", str(demo_runs["extremal"]), str(demo_runs["gradient"]), "--out", str(out),
                   "--per-class", "2"]) == 0
    index = out / "index.html"
    check = check_page(index)
    _assert_page_is_whole(index, check)
    text = index.read_text()
    assert 'id="compare"' in text and "Method comparison: extremal, gradient" in text
    columns = [i["src"] for i in check.images if i["src"].startswith("img/c")]
    assert sorted(columns) == sorted(f"img/c{n}_{j}.png" for n in range(8) for j in range(2))
    assert "no gradient row" not in text
    # the plots are shown at their own pixel size (scaled down, their tick labels were ~5 px)
    plots = [i for i in check.images if i["src"].endswith(("_bars.png", "astar_hist.png", "area_growth.png"))]
    assert len(plots) == 8 + 2 and all(i["width"] == i["naturalWidth"] for i in plots), plots
    assert "extremal (32 rows)" in text and "gradient (32 rows)" in text


def test_the_check_sees_a_broken_image_and_a_console_error(demo_runs, tmp_path: Path) -> None:
    """The checks above can fail: a missing PNG and a script error are both reported."""
    copy = tmp_path / "report"
    shutil.copytree(demo_runs["extremal"] / "report", copy)
    (copy / "img" / "p0_m0.png").unlink()
    index = copy / "index.html"
    index.write_text(index.read_text().replace("</body>", "<script>console.error('boom')</script></body>"))
    check = check_page(index)
    assert [i["src"] for i in check.images if i["naturalWidth"] == 0] == ["img/p0_m0.png"]
    assert any("boom" in e for e in check.errors) and any("p0_m0.png" in e or "load" in e for e in check.errors)


def test_report_command_line_errors(tmp_path: Path, capsys) -> None:
    from jobs.report import main as report

    assert report(["--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 1
    assert "no Parquet parts" in capsys.readouterr().err
    assert report(["--input", str(tmp_path), "--out", str(tmp_path / "r"), "--per-class", "0"]) == 2
