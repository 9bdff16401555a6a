"""``python -m jobs.deletion_insertion`` end to end on the session's Ray cluster: a real attribution
job (extremal, 2 maps per row, an undecodable sample), then the evaluation's Parquet compared with
``causal_curves`` run directly on the decoded images and the stored maps; the summary table, the
resume, and the refusals (another step into the same output, a config that did not make the
results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from demo import build_demo_model
from extremal_core.network import engine_model
from extremal_core.settings import ExtremalSettings
from jobs.attribute import main as attribute
from jobs.deletion_insertion import main
from pipeline.config_load import dump_config_yaml, load_config
from pipeline.io.parts import read_results, row_maps
from pipeline.metrics.deletion_insertion import causal_curves
from pipeline.metrics.road import NOISE, road_curves
from pipeline.models import load_model
from pipeline.readahead import read_items
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import image_samples, write_shard


@pytest.fixture
def attribution(tmp_path: Path) -> tuple[str, str]:
    """An extremal job's output over 2 shards (5 good samples, 1 undecodable) and its YAML."""
    bad = {"__key__": "s000_0009", "jpg": b"not a jpeg", "cls": 1}
    shards = [write_shard(tmp_path / "shards" / "di-000000.tar", [*image_samples(0, 2), bad, *image_samples(0, 3)[2:]]),
              write_shard(tmp_path / "shards" / "di-000001.tar", image_samples(1, 2))]
    out = str(tmp_path / "attr")
    # A checkpoint: every actor (and the test) must evaluate the very model that made the maps.
    torch.manual_seed(0)
    torch.save(build_demo_model(4).state_dict(), tmp_path / "model.pt")
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(tiny_config(shards, out, f"model.checkpoint={tmp_path / 'model.pt'}")))
    assert attribute(["--config", str(path)]) == 0
    return out, str(path)


@pytest.mark.usefixtures("ray_cluster")
def test_deletion_insertion_job(attribution: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    results, config = attribution
    assert main(["--results", results, "--step", "64", "--forward-batch", "20"]) == 0
    printed = capsys.readouterr().out
    assert "extremal" in printed and "deletion" in printed

    evaluated = pq.read_table(Path(results) / "deletion_insertion" / "parts").to_pandas()
    attr = read_results(results).to_pylist()
    assert len(evaluated) == len(attr) == 6
    bad = evaluated[evaluated["key"] == "s000_0009"].iloc[0]
    assert bad["error"].startswith("attribution: ") and np.isnan(bad["deletion_auc"])
    good = evaluated[evaluated["error"].isna()]
    assert len(good) == 5 and (good["n_steps"] == 16).all() and (good["step"] == 64).all()  # 32*32 / 64

    # The same numbers straight from the pieces: images decoded with the job's preprocessing, each
    # row's maps summed, one call of causal_curves per row.
    loaded = load_model(load_config(config).model)
    model = engine_model(loaded.model, ExtremalSettings())  # the task's copy of the model
    images = {}
    for shard in {r["shard"] for r in attr}:
        images.update({it.key: it.x for it in read_items(shard, loaded.preprocess) if it.error is None})
    by_key = good.set_index("key")
    for row in attr:
        if row["error"] is not None:
            continue
        x = images[row["key"]][None]
        sal = torch.from_numpy(row_maps(row).sum(axis=0))[None]
        tgt = torch.tensor([row["target"]])
        d = causal_curves(model, x, sal, tgt, "deletion", step=64)
        ins = causal_curves(model, x, sal, tgt, "insertion", step=64)
        got = by_key.loc[row["key"]]
        np.testing.assert_allclose(np.asarray(got["deletion_curve"]), d.curves[0].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got["insertion_curve"]), ins.curves[0].numpy(), rtol=1e-4, atol=1e-6)
        assert got["deletion_auc"] == pytest.approx(d.auc.item(), rel=1e-4, abs=1e-6)
        assert got["insertion_auc"] == pytest.approx(ins.auc.item(), rel=1e-4, abs=1e-6)

    summary = pd.read_csv(Path(results) / "deletion_insertion" / "deletion_insertion.csv")
    assert summary["method"].tolist() == ["extremal"]
    s = summary.iloc[0]
    assert (s["rows"], s["errors"], s["scored"], s["step"]) == (6, 1, 5, 64)
    assert s["deletion_auc"] == pytest.approx(good["deletion_auc"].mean(), rel=1e-5)
    assert s["insertion_auc"] == pytest.approx(good["insertion_auc"].mean(), rel=1e-5)
    assert s["insertion_std"] == pytest.approx(good["insertion_auc"].std(ddof=0), rel=1e-4, abs=1e-7)
    assert good["srg"].isna().all() and pd.isna(s["srg"])  # zeros for deletion, blur for insertion: no SRG

    # Resume: nothing to do. Another step into the same output is refused; a new output is fine.
    assert main(["--results", results, "--step", "64", "--config", config]) == 0
    assert "2/2 done (2 from an earlier run)" in capsys.readouterr().out
    assert main(["--results", results, "--step", "32"]) == 1
    assert "another config" in capsys.readouterr().err
    # A config that did not make these results (another max_iter) is a command-line error.
    assert main(["--results", results, "--config", config, "--set", "extremal.max_iter=6"]) == 2
    assert "did not make" in capsys.readouterr().err

    # ROAD and SRG (one blur occluder) into another output: the task's numbers are road_curves'
    # on the decoded images (to the imputation noise, drawn per chunk: the task's chunks hold
    # several images), the rows' SRG is insertion minus deletion AUC.
    road_out = str(Path(results) / "road")
    assert main(["--results", results, "--config", config, "--step", "64", "--deletion-substrate", "blur", "--road",
                 "--out", road_out]) == 0
    capsys.readouterr()
    rr = pq.read_table(Path(road_out) / "parts").to_pandas()
    rr = rr[rr["error"].isna()].set_index("key")
    np.testing.assert_allclose(rr["srg"], rr["insertion_auc"] - rr["deletion_auc"], rtol=0, atol=1e-6)
    noise = NOISE / torch.tensor(loaded.preprocess.std)
    for key, row in rr.iterrows():
        x = images[key][None]
        attr_row = next(r for r in attr if r["key"] == key)
        sal = torch.from_numpy(row_maps(attr_row).sum(axis=0))[None]
        for order in ("morf", "lerf"):
            ref = road_curves(model, x, sal, torch.tensor([attr_row["target"]]), order, noise=noise)
            np.testing.assert_allclose(np.asarray(row[f"road_{order}_curve"]), ref.curves[0].numpy(), rtol=0, atol=2e-3)
            assert row[f"road_{order}_auc"] == pytest.approx(ref.auc.item(), abs=2e-3)
    road_summary = pd.read_csv(Path(road_out) / "deletion_insertion.csv").iloc[0]
    assert road_summary["road_morf_auc"] == pytest.approx(rr["road_morf_auc"].mean(), rel=1e-5)
    assert road_summary["srg"] == pytest.approx(rr["srg"].mean(), abs=1e-6)
    assert np.isnan(s["road_lerf_auc"])  # the first run had no --road
