"""``python -m jobs.sanity_check`` on the demo's trained CNN and shards (session fixture, trained
in the session), gradient maps at 64x64, on the session's Ray cluster: cascading randomization
from the classifier down, each stage its own resumable attribution output, similarity falling
once the top layers are random; and ``randomize`` itself (its own init, BatchNorm statistics
kept, the same weights for the same seed, the cascade's shared layers equal)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from demo import build_demo_model
from jobs.sanity_check import main
from pipeline.config_load import dump_config_yaml
from pipeline.evaluation.randomization import learnable_layers, randomize, stages
from pipeline.io.parts import iter_part_rows, part_urls, read_results
from pipeline.report.build import build_report
from pipeline.schema import restore_maps
from pipeline.storage import Storage
from tests.pipeline.conftest import tiny_config
from tests.report.chromium import check_page, chromium_binary


def test_randomize_keeps_batchnorm_statistics_and_is_seeded(demo_model_and_data) -> None:
    trained = demo_model_and_data.model
    assert learnable_layers(trained) == ["features.0", "features.1", "features.3", "features.4", "features.6",
                                         "features.7", "features.9", "features.10", "classifier"]
    a = randomize(build_demo_model(4).eval(), [], 0)
    a.load_state_dict(trained.state_dict())
    rng_before = torch.random.get_rng_state()
    randomize(a, ["classifier", "features.10"], seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    bn, bn0 = a.features[10], trained.features[10]
    assert torch.equal(bn.running_mean, bn0.running_mean) and torch.equal(bn.running_var, bn0.running_var)
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert not torch.equal(a.classifier.weight, trained.classifier.weight)
    assert torch.equal(a.features[9].weight, trained.features[9].weight)  # not listed: kept
    b = build_demo_model(4).eval()
    b.load_state_dict(trained.state_dict())
    randomize(b, ["classifier", "features.10", "features.9"], seed=3)  # the next cascading stage
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(b.features[9].weight, trained.features[9].weight)
    with pytest.raises(ValueError, match="no learnable layer named pool"):
        randomize(b, ["pool"])
    assert [s.randomized for s in stages(["c", "b", "a"], ["cascading"])] == [("c",), ("c", "b"), ("c", "b", "a")]
    assert [s.randomized for s in stages(["c", "b"], ["independent"])] == [("c",), ("b",)]


@pytest.mark.usefixtures("ray_cluster")
def test_sanity_check_job(demo_model_and_data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assets = demo_model_and_data.assets
    cfg = tiny_config(
        assets.shards[:1], str(tmp_path / "attr"), f"model.checkpoint={assets.checkpoint}", "model.preprocessing.crop=64",
        "model.preprocessing.mean=[0.5,0.5,0.5]", "model.preprocessing.std=[0.15,0.15,0.15]", "method.name=gradient",
        "cluster.num_actors=1",
    )
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(cfg))
    layers = "classifier,features.6,features.0"
    assert main(["--config", str(path), "--mode", "cascading", "--layers", layers]) == 0
    printed = capsys.readouterr().out
    assert "cascading" in printed and "spearman_abs" in printed

    table = pd.read_csv(tmp_path / "attr" / "sanity_check" / "sanity_check.csv")
    assert table["layer"].tolist() == layers.split(",") and table["randomized"].tolist() == [1, 2, 3]
    assert (table["rows"] == 8).all()
    stage = read_results(str(tmp_path / "attr" / "sanity_check" / "cascading" / "002-features.0"))
    assert stage.num_rows == 8 and set(stage.column("model").to_pylist()) == {
        f"{cfg.model.factory}@{Path(assets.checkpoint).name}+random(3 layers)"}
    stage_dir = tmp_path / "attr" / "sanity_check" / "cascading" / "002-features.0"
    guard = json.loads((stage_dir / "config.json").read_text())["config_hash"]
    (marker,) = stage_dir.glob("_done/*.json")
    job_hash = json.loads((tmp_path / "attr" / "config.json").read_text())["config_hash"]
    assert json.loads(marker.read_text())["config_hash"] == guard != job_hash
    # Each layer randomized takes the gradients further from the trained network's (measured:
    # Spearman |map| 0.65 -> 0.26 -> 0.20, SSIM 0.46 -> 0.09 -> 0.05; gradients are >= 0, so
    # the signed Spearman equals the absolute one).
    for metric in ("spearman_abs", "spearman_signed", "ssim", "hog_spearman"):
        assert table[metric].is_monotonic_decreasing, metric
    last = table.iloc[-1]
    assert last["spearman_abs"] < 0.4 and last["ssim"] < 0.3 and last["hog_spearman"] < 0.4

    # Resume: every job's shards come from the earlier run; the table is the same. eMPRT runs
    # against the cascade's last stage, already there (sMPRT: test_mprt_task_in_process).
    assert main(["--config", str(path), "--mode", "cascading", "--layers", layers, "--emprt"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("from an earlier run") == 0 and "eMPRT" in printed  # run_job's report is not printed here
    again = pd.read_csv(tmp_path / "attr" / "sanity_check" / "sanity_check.csv")
    pd.testing.assert_frame_equal(again, table)
    (mprt,) = pd.read_csv(tmp_path / "attr" / "sanity_check" / "mprt.csv").to_dict("records")
    # The random model's gradients spread wider than the trained one's, its outputs flatter
    # (measured: entropy 2.61 -> 3.89, eMPRT 0.52; output entropy 0.38 -> 1.38).
    assert mprt["method"] == "gradient" and mprt["scored"] == 8 and mprt["smprt_rows"] == 0
    assert mprt["emprt"] > 0.2 and mprt["output_entropy_random"] > mprt["output_entropy"] > 0
    assert main(["--config", str(path), "--layers", "nope"]) == 2
    assert "no learnable layer named nope" in capsys.readouterr().err

    # The report of the trained model's output shows the table, the curves and the stages' grid.
    index = Path(build_report([str(tmp_path / "attr")], str(tmp_path / "report"), per_class=1))
    text = index.read_text()
    assert 'id="sanity"' in text and "sanity_curves.png" in text and "+ features.0" in text
    assert text.count("with the layers down to") == 3 * min(4, text.count("trained model&#x27;s map of"))
    if chromium_binary() is not None:
        from tests.report.test_report_browser import _assert_page_is_whole

        _assert_page_is_whole(index, check_page(index, tmp_path / "report.png"))


def test_mprt_task_in_process(demo_model_and_data, tmp_path: Path) -> None:
    """sMPRT's denoised outputs and the per-row eMPRT / sMPRT part, each task run on one shard in
    this process (no Ray; the job runs them through the driver): the part's numbers are the
    metrics of the stored maps."""
    import functools

    from pipeline.evaluation.mprt_task import MPRTSettings, MPRTTask, SmoothedAttributionTask
    from pipeline.metrics.mprt import discrete_entropy, smprt_similarity

    assets = demo_model_and_data.assets
    shard = assets.shards[0]

    def cfg(name: str):
        return tiny_config([shard], str(tmp_path / name), f"model.checkpoint={assets.checkpoint}",
                           "model.preprocessing.crop=32", "method.name=gradient")

    layers = ("classifier", "features.6")
    runs = {"orig": (), "rand": layers, "smooth_orig": (), "smooth_rand": layers}
    for name, randomized in runs.items():
        samples = 3 if name.startswith("smooth") else 1  # one sample: the plain maps
        SmoothedAttributionTask(cfg(name), "cpu", layers=randomized, samples=samples, seed=0).run(shard)
    settings = MPRTSettings(str(tmp_path / "orig"), str(tmp_path / "rand"), layers, 0, str(tmp_path / "smooth_orig"),
                            str(tmp_path / "smooth_rand"), samples=3)
    marker = functools.partial(MPRTTask, settings=settings)(cfg("mprt"), "cpu").run(shard)
    assert marker["rows"] == 8 and marker["errors"] == 0
    part = read_results(str(tmp_path / "mprt")).to_pandas()

    def summed(name: str) -> torch.Tensor:
        columns = ["maps", "map_min", "map_max", "map_height", "map_width", "error"]
        rows = iter_part_rows(part_urls(str(tmp_path / name))[0], Storage(), columns)
        return torch.stack([torch.from_numpy(restore_maps(r["stored"], r["map_min"], r["map_max"]).sum(0)) for r in rows])

    assert part["explanation_entropy"].tolist() == pytest.approx(discrete_entropy(summed("orig")).tolist(), rel=1e-6)
    assert part["explanation_entropy_random"].tolist() == pytest.approx(discrete_entropy(summed("rand")).tolist(), rel=1e-6)
    want = smprt_similarity(summed("smooth_orig"), summed("smooth_rand")).tolist()
    assert part["smprt"].tolist() == pytest.approx(want, abs=1e-6) and max(want) < 0.9
    assert part["output_entropy_random"].gt(0).all() and part["emprt"].notna().all()
