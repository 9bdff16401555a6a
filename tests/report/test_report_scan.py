"""The report's sample and aggregates on synthetic outputs: the same rows whatever the
partitioning, aggregates equal to a direct count over every row, and a 100,000-row output
reported in the memory of a 10,000-row one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.report.scan import read_rows, row_hash, scan_output
from tests.report.synthetic import AREAS, ERROR, synthetic_rows, write_output


def test_aggregates_equal_a_direct_count_over_every_row(tmp_path: Path) -> None:
    cols = synthetic_rows(900)
    out = write_output(tmp_path, cols, np.array_split(np.arange(900), 3), row_group_size=128)
    scan = scan_output(str(out), per_class=3)
    df = pq.read_table(out / "parts", columns=["target", "error", "scores", "optimal_area", "optimal_area_reached"]).to_pandas()
    good = df[df.error.isna()]
    assert scan.rows == 900 and scan.errors == 18 and scan.error_reasons == {"ValueError": 18}
    assert len(scan.error_rows) == 18 and all(e == ERROR for _, _, e in scan.error_rows)
    assert scan.areas == tuple(round(float(a), 6) for a in AREAS)
    for c, group in good.groupby("target"):
        stats = scan.classes[int(c)]
        counts = group.optimal_area.round(6).value_counts().to_dict()
        assert dict(stats.optimal) == {round(float(k), 6): v for k, v in counts.items()}
        assert stats.unreached == int((group.optimal_area_reached == False).sum())  # noqa: E712
        mean = np.stack(group.scores.to_numpy()).mean(axis=0)
        np.testing.assert_allclose(stats.score_sums / stats.scored, mean, rtol=1e-6)


def test_the_sample_is_the_smallest_hashes_per_class_whatever_the_partitioning(tmp_path: Path) -> None:
    cols = synthetic_rows(600)
    a = scan_output(str(write_output(tmp_path / "a", cols, np.array_split(np.arange(600), 2))), per_class=4)
    shuffled = np.random.default_rng(1).permutation(600)
    b = scan_output(str(write_output(tmp_path / "b", cols, np.array_split(shuffled, 7), row_group_size=50)), per_class=4)
    drawn = {c: [(k, t) for _, k, t, _ in items] for c, items in a.sample.items()}
    assert drawn == {c: [(k, t) for _, k, t, _ in items] for c, items in b.sample.items()}
    frame = pd.DataFrame({"key": cols["key"], "target": cols["target"], "error": cols["error"]})
    frame = frame[~frame.error]
    frame["h"] = [row_hash(k, t) for k, t in zip(frame.key, frame.target)]
    expected = {int(c): [(k, int(t)) for k, t in g.nsmallest(4, "h")[["key", "target"]].itertuples(index=False)]
                for c, g in frame.groupby("target")}
    assert drawn == expected
    # the drawn rows read back are those rows, maps included
    items = [item for c in sorted(b.sample) for item in b.sample[c]]
    rows = read_rows([loc for *_, loc in items])
    index = {k: i for i, k in enumerate(cols["key"])}
    for (_, key, target, _), row in zip(items, rows):
        assert (row["key"], row["target"]) == (key, target)
        np.testing.assert_array_equal(np.asarray(row["maps"]).reshape(-1), cols["maps"][index[key]])


_MEASURE = """
import json, sys, time
from pipeline.report import build_report

def status(name):  # this process's own numbers (getrusage's maxrss carries the forking parent's over exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(name))

base = status("VmRSS:")  # after the imports (torch, matplotlib): the same for any run
t0 = time.monotonic()
build_report([sys.argv[1]], sys.argv[2], per_class=4)
print(json.dumps({"growth_kb": status("VmHWM:") - base, "s": time.monotonic() - t0}))
"""


def _measure(output: Path, report: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(output), str(report)], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_100000_row_output_is_reported_in_the_memory_of_a_10000_row_one(tmp_path: Path) -> None:
    """The report process's peak RSS above its imports (Python, Arrow, matplotlib alike) for 10x the
    rows in 10x the parts of the same size: within 20% + 20 MB, i.e. flat (reading every row's maps
    at once, as ``read_results`` does, adds ~140 MB here). The drawn images are the same count."""
    cols = synthetic_rows(100_000, seed=2)
    big = write_output(tmp_path / "big", cols, np.array_split(np.arange(100_000), 50))
    small = write_output(tmp_path / "small", cols, np.array_split(np.arange(10_000), 5))
    m_small = _measure(small, tmp_path / "r_small")
    m_big = _measure(big, tmp_path / "r_big")
    assert m_big["growth_kb"] <= 1.2 * m_small["growth_kb"] + 20_000, (m_small, m_big)
    page = (tmp_path / "r_big" / "index.html").read_text()
    assert page.count("_orig.png") == 5 * 4 and "100000 rows" in page.replace("<td>", "").replace("</td>", " ")
