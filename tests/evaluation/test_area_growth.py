"""Area growth: per-class a* histogram, share reaching v >= 1 and mean v_a, on synthetic Parquet
parts (the pipeline's own writer and commit) with answers worked out by hand; streamed by one-row
batches and by whole parts alike; the CLI's tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.area_growth import main
from pipeline.commit import commit_part
from pipeline.evaluation.area_growth import AreaGrowth, area_growth, tables
from pipeline.schema import rows_to_table

AREAS = [0.05, 0.1, 0.2]


def _row(key: str, target: int, scores: list[float] | None, a_star: float | None, reached: bool | None,
         method: str = "extremal", error: str | None = None) -> dict:
    return {"key": key, "shard": "s", "method": method, "model": "m", "target": target, "width": 8, "height": 8,
            "areas": AREAS if scores is not None else None, "scores": scores, "optimal_area": a_star,
            "optimal_area_reached": reached, "error": error}


PART_A = [
    _row("a0", 0, [0.5, 1.0, 1.1], 0.1, True),
    _row("a1", 0, [1.0, 1.1, 1.2], 0.05, True),
    _row("a2", 1, [0.2, 0.4, 0.6], 0.2, False),
    _row("a3", 1, None, None, None, error="cannot decode image"),
]
PART_B = [
    _row("b0", 1, [0.9, 1.0, 1.25], 0.1, True),
    _row("b1", 0, [0.1, 0.3, 0.9], 0.2, False),
    _row("b2", 2, None, None, None, method="gradient"),
]


@pytest.fixture
def results(tmp_path: Path) -> str:
    out = str(tmp_path / "attr")
    commit_part(out, "shard-a.tar", rows_to_table(PART_A))
    commit_part(out, "shard-b.tar", rows_to_table(PART_B))
    return out


def _check(result: AreaGrowth) -> None:
    t = {name: tab.to_pandas() for name, tab in tables(result).items()}
    classes = t["area_growth_classes"]
    assert classes["class"].isna().tolist() == [True, False, False]  # all, then 0, 1
    assert classes["rows"].tolist() == [5, 3, 2]
    assert classes["reached"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(classes["share_reached"], [3 / 5, 2 / 3, 1 / 2])
    np.testing.assert_allclose(classes["mean_optimal_area"], [(0.1 + 0.05 + 0.1) / 3, (0.1 + 0.05) / 2, 0.1], rtol=1e-6)

    hist = t["area_growth_optimal_area"]
    assert hist["area"].tolist() == AREAS * 3
    assert hist["rows"].tolist() == [1, 2, 0, 1, 1, 0, 0, 1, 0]  # a* of the reached rows only
    np.testing.assert_allclose(hist["share"], [1 / 5, 2 / 5, 0, 1 / 3, 1 / 3, 0, 0, 1 / 2, 0])

    scores = t["area_growth_scores"]
    expected = [(0.5 + 1.0 + 0.2 + 0.9 + 0.1) / 5, (1.0 + 1.1 + 0.4 + 1.0 + 0.3) / 5, (1.1 + 1.2 + 0.6 + 1.25 + 0.9) / 5,
                (0.5 + 1.0 + 0.1) / 3, (1.0 + 1.1 + 0.3) / 3, (1.1 + 1.2 + 0.9) / 3,
                (0.2 + 0.9) / 2, (0.4 + 1.0) / 2, (0.6 + 1.25) / 2]
    np.testing.assert_allclose(scores["mean_score"], expected, rtol=1e-6)  # float32 scores in Parquet
    assert scores["rows"].tolist() == [5, 5, 5, 3, 3, 3, 2, 2, 2]
    assert result.skipped == 2  # the error row and the gradient row


def test_known_answers_streamed_by_any_batch(results: str) -> None:
    _check(area_growth(results, batch_rows=1))
    _check(area_growth(results))


def test_merge_of_parts_equals_the_whole(results: str) -> None:
    a, b = AreaGrowth(), AreaGrowth()
    a.add(np.array([0, 0]), AREAS, np.array([[0.5, 1.0, 1.1], [1.0, 1.1, 1.2]]), np.array([0.1, 0.05]),
          np.array([True, True]))
    b.add(np.array([1, 1, 0]), AREAS, np.array([[0.2, 0.4, 0.6], [0.9, 1.0, 1.25], [0.1, 0.3, 0.9]]),
          np.array([0.2, 0.1, 0.2]), np.array([False, True, False]))
    b.skipped = 2
    _check(a.merge(b))


def test_cli_prints_and_writes_tables(results: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tables"
    assert main(["--results", results, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all" in printed and "60.0" in printed  # 3 of 5 rows reach v >= 1
    for name in ("area_growth_classes", "area_growth_optimal_area", "area_growth_scores"):
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv"), pd.read_parquet(out / f"{name}.parquet"),
                                      check_dtype=False)
    assert pd.read_csv(out / "area_growth_classes.csv")["rows"].tolist() == [5, 3, 2]
    assert main(["--results", str(tmp_path / "nothing")]) == 1
    assert main(["--results", results, "--set", "a=1"]) == 2
