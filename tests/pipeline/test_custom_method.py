"""A method from outside the repository, named ``package.module:Class`` in the job config, with
its own per-row value column declared on its card: attribute (Ray job) -> Parquet -> pointing
game -> report, with no file of the project edited."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from extremal_core.methods import Column, Explanation, MethodCard, Smoothing
from jobs.attribute import main as attribute
from jobs.pointing_game import main as pointing_game
from pipeline.config_load import dump_config_yaml
from pipeline.method import card_for
from pipeline.report import build_report
from tests.pipeline.conftest import tiny_config

NAME = "tests.pipeline.test_custom_method:BrightnessExplainer"


class BrightnessExplainer:
    """maps ``[B, 1, H, W]``: each pixel's distance from the image's mean colour (the demo's
    objects stand out from a flat background); ``contrast`` ``[B]``: the largest such distance."""

    card = MethodCard(
        columns=(Column("contrast", "float32", "[]", "the map's maximum"),), maps="positive", smooth=Smoothing(0.02)
    )

    def __init__(self, model: torch.nn.Module | None, *, power: float = 1.0):
        self.power = float(power)

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> Explanation:
        dist = (images - images.mean(dim=(2, 3), keepdim=True)).norm(dim=1, keepdim=True) ** self.power
        # `scratch` is not on the card: it stays in memory.
        return Explanation(dist, ("brightness",), {"contrast": dist.amax(dim=(1, 2, 3)), "scratch": dist[:, 0, 0]})


@pytest.mark.usefixtures("ray_cluster")
def test_a_method_outside_the_repository_through_every_job(tmp_path: Path, demo_model_and_data) -> None:
    shards = demo_model_and_data.assets.shards[:1]
    out = tmp_path / "out"
    cfg = tiny_config(shards, str(out), f"method.name={NAME}", "method.power=2.0", "model.preprocessing.crop=null")
    path = tmp_path / "job.yaml"
    path.write_text(dump_config_yaml(cfg))
    assert attribute(["--config", str(path)]) == 0

    table = pq.read_table(out / "parts")
    good = table.filter(table.column("error").is_null())
    assert good.num_rows == 8 and set(table.column("method").to_pylist()) == {NAME}
    assert "contrast" in table.column_names and "scratch" not in table.column_names
    assert table.schema.field("contrast").type == "float"
    assert all(c > 0 for c in good.column("contrast").to_pylist())

    assert card_for(NAME).smooth == Smoothing(0.02)
    assert pointing_game(["--results", str(out), "--local"]) == 0
    summary = pq.read_table(out / "pointing_game" / "pointing_game.parquet").to_pylist()
    assert {r["method"] for r in summary} >= {NAME, "center"}

    index = build_report([str(out)], str(tmp_path / "report"))
    assert NAME in Path(index).read_text()
