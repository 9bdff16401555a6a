"""``configs/benchmark``: every cell's configs load with TorchRay's per-method settings, a
missing checkpoint is exit 2 with one line before anything runs, and the pointing game's summary
prints the published numbers of the cell beside ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.attribute import main as attribute
from pipeline.config_load import load_config
from pipeline.evaluation.pointing_run import PartResult
from pipeline.evaluation.pointing_table import format_summary
from pipeline.evaluation.published import cell_of_model, parse_cell, published_table
from tests.shard_factory import image_samples, write_shard

BENCHMARK = Path(__file__).resolve().parents[2] / "configs" / "benchmark"
CELLS = [f"{d}_{a}" for d in ("voc07", "coco14") for a in ("vgg16", "resnet50")]
METHODS = ("gradient", "guided_backprop", "grad_cam", "rise")


@pytest.mark.parametrize("cell", CELLS)
def test_cell_configs_carry_torchrays_settings(cell):
    dataset, arch = cell.split("_")
    base = load_config(str(BENCHMARK / f"{cell}.yaml"))
    assert (base.model.arch, base.model.dataset) == (f"torchray/{arch}", dataset)
    assert base.targets.mode == "labels" and base.method.name == "extremal"
    optim, masks = base.extremal.optim, base.extremal.masks
    assert optim.areas == ((0.025, 0.05, 0.1, 0.2) if dataset == "voc07" else (0.018, 0.025, 0.05, 0.1))
    assert (optim.max_iter, masks.step, masks.sigma, masks.num_levels, optim.jitter) == (800, 7, 21.0, 8, True)
    assert (optim.variant, masks.perturbation, optim.reward) == ("preserve", "blur", "simple")
    assert cell_of_model(base.model.arch, base.model.dataset) == (dataset, arch)
    for method in METHODS:
        cfg = load_config(str(BENCHMARK / "methods" / f"{cell}_{method}.yaml"))
        assert cfg.method.name == method and cfg.model.checkpoint == base.model.checkpoint
        assert cfg.output.uri.endswith(f"{cell}_{method}")
        params = cfg.method.params
        if method != "rise":
            assert params["backward"] == "pointing"
            assert cfg.model.options == ({"pool": "sliding"} if arch == "resnet50" else {})
        if method == "grad_cam":
            assert params["layer"] == ("features.29" if arch == "vgg16" else "layer4")


def test_missing_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    shard = write_shard(tmp_path / "voc-000000.tar", image_samples(0, 1))
    argv = ["--config", str(BENCHMARK / "methods" / "voc07_resnet50_gradient.yaml"), "--set", f"input.shards={shard}",
            "--set", f"output.uri={tmp_path / 'out'}", "--set", f"model.checkpoint={tmp_path / 'none.pth.tar'}"]
    assert attribute(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.checkpoint: checkpoint not found") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_summary_prints_the_published_cell():
    table = published_table()
    assert len(table) == 4 and all(len(cell) == 9 for cell in table.values())
    assert table[("voc07", "vgg16")]["extremal"] == (88.0, 76.1)
    assert table[("coco14", "resnet50")]["grad_cam"] == (57.3, 52.3)
    result = PartResult()
    for method, hit in (("extremal", True), ("center", False)):
        for subset in ("all", "difficult"):
            result.tally(method, subset).add(3, hit)
    text = format_summary(result, table[parse_cell("voc07/vgg16")])
    lines = text.splitlines()
    assert "paper all" in lines[0] and "paper diff" in lines[0]
    assert lines[1].split()[:3] == ["extremal", "100.0", "100.0"] and lines[1].split()[-2:] == ["88.0", "76.1"]
    assert lines[2].split()[-2:] == ["69.6", "42.4"]
    with pytest.raises(ValueError, match="voc07/vgg16"):
        parse_cell("voc2007/vgg16")


def test_pointing_game_job_refuses_an_unknown_cell(tmp_path, capsys):
    from jobs.pointing_game import main as pointing_game

    assert pointing_game(["--results", str(tmp_path), "--published", "voc07/alexnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --published must be one of voc07/vgg16") and "\n" not in err
