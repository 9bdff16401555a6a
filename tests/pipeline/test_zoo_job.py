"""``python -m jobs.attribute`` on timm and Hugging Face models (random weights, 224²) over the
three input formats, two units of two images each: every format with another family and method
(every method on every family runs in-process in ``tests/zoo/test_zoo_methods.py``). The output's
``key`` joins the input table (the README's DuckDB query); a re-run computes nothing again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from jobs.attribute import main
from pipeline.config_load import dump_config_yaml
from pipeline.io.parts import read_results, row_maps
from tests.pipeline.conftest import tiny_config
from tests.zoo.inputs import NUM_UNITS, PER_UNIT, write_all_formats
from tests.zoo.models import model_configs

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

CASES = [  # (input format, model family, method and its cheap settings)
    ("webdataset", "timm_convnext", ["method.name=extremal", "extremal.areas=[0.1]", "extremal.max_iter=3"]),
    ("parquet", "timm_vit", ["method.name=grad_cam"]),
    ("hf_datasets", "hf_vit", ["method.name=rise", "method.num_masks=8"]),
]


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("fmt,family,method", CASES, ids=[c[0] for c in CASES])
def test_attribute_job_on_each_input_format(tmp_path: Path, capsys: pytest.CaptureFixture, fmt, family, method) -> None:
    inputs = write_all_formats(tmp_path / "in", size=(240, 230))
    out = tmp_path / "out"
    cfg = tiny_config(inputs[fmt], str(out), f"input.format={fmt}", "targets.mode=top1", "cluster.num_actors=1", *method)
    cfg = dataclasses.replace(cfg, model=model_configs(tmp_path)[family])
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(cfg))
    assert main(["--config", str(path)]) == 0, capsys.readouterr().err
    table = read_results(str(out))
    assert table.num_rows == NUM_UNITS * PER_UNIT and table.column("error").null_count == table.num_rows
    for row in table.to_pylist():
        maps = row_maps(row)
        assert maps.shape[-2:] == (224, 224) and np.isfinite(maps).all()
    if fmt == "parquet":
        # Resume: every unit is done, nothing is computed again.
        parts = sorted(p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet"))
        assert main(["--config", str(path)]) == 0
        assert sorted(p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet")) == parts
        import duckdb

        joined = duckdb.sql(
            f"SELECT i.key, s.target FROM read_parquet('{inputs['parquet']}') i "
            f"JOIN read_parquet('{out}/parts/*.parquet') s USING (key) ORDER BY i.key"
        ).fetchall()
        assert [k for k, _ in joined] == ["s000_0000", "s000_0001", "s001_0000", "s001_0001"]
