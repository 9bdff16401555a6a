"""``python -m jobs.pointing_game`` end to end: VOC shards made by ``jobs.make_shards``, real
Parquet parts (flat maps and fixed-shape tensors, an error row), the per-part Ray task map on the
session's cluster, and the tables compared with TorchRay's PointingGameBenchmark fed the points
that TorchRay's own resize and smoothing give on the stored maps."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchray.attribution.common import resize_saliency
from torchray.benchmark.pointing_game import PointingGame, PointingGameBenchmark
from torchray.utils import imsmooth
from torchvision import datasets as tvd

from jobs.make_shards import main as make_shards
from jobs.pointing_game import main
from pipeline.commit import commit_part
from pipeline.config_load import dump_config_yaml
from pipeline.geometry import Geometry
from pipeline.io.parts import read_results, row_maps
from pipeline.metrics.ground_truth import class_mask
from pipeline.schema import rows_to_table
from pipeline.shards import iter_samples
from tests.datasets.layouts import write_voc
from tests.pipeline.conftest import tiny_config

# Ids of EBP's VOC07 flag file (000001: dog flagged; 000003: chair, sofa; 000006: chair,
# diningtable, pottedplant) and one missing from it (it counts in both subsets).
IMAGES = {
    "000001": (150, 110, [("dog", [20, 30, 70, 90], False), ("person", [90, 10, 140, 100], False),
                          ("dog", [100, 80, 120, 105], True)]),
    "000002": (120, 160, [("cat", [5, 5, 30, 40], True), ("bird", [60, 90, 110, 150], False)]),
    "000003": (130, 100, [("chair", [10, 60, 40, 95], False), ("sofa", [50, 20, 125, 90], False)]),
    "000004": (100, 100, [("train", [30, 30, 70, 70], False)]),
    "000006": (160, 120, [("chair", [120, 70, 155, 115], False), ("diningtable", [40, 40, 110, 100], False),
                          ("pottedplant", [5, 5, 25, 40], True), ("pottedplant", [130, 5, 150, 30], False)]),
    "900001": (110, 90, [("horse", [60, 40, 105, 85], False), ("person", [65, 10, 90, 60], False)]),
}


def _write_parts(shards: list[str], out: str, method: str, crop: int | None, maps_for) -> None:
    """One part per shard, one row per (image, class present), ``maps_for(meta, class, geometry)``
    giving float maps [M, h, w]; with ``crop`` every map is [2, crop, crop] (a tensor column) and
    the first row of each part is an error row."""
    for shard in shards:
        rows = []
        for s in iter_samples(shard):
            w, h = s.meta["width"], s.meta["height"]
            g = Geometry.of(w, h, resize=48, crop=crop)
            for c in s.labels:
                row = {"key": s.key, "shard": shard, "method": method, "model": "m", "target": c,
                       "target_source": "labels", "width": w, "height": h, **g.columns()}
                if crop is not None and not rows:
                    rows.append({**row, "error": "cannot decode image: test"})
                    continue
                rows.append({**row, "maps": maps_for(s.meta, c, g), "error": None})
        commit_part(out, shard, rows_to_table(rows, "tensor", None if crop is None else (2, crop, crop)))


def _random_maps(seed: int):
    rng = np.random.default_rng(seed)

    def maps_for(meta, c, g):
        coarse = torch.from_numpy(rng.random((2, 1, 4, 4), dtype=np.float32))
        return torch.nn.functional.interpolate(coarse, size=(g.out_height, g.out_width), mode="bilinear")[:, 0].numpy()

    return maps_for


def _oracle_maps(meta, c, g):
    """The ground truth itself, drawn in the model input's frame."""
    mask = class_mask(meta, c, g.width, g.height)
    if mask is None:
        mask = np.zeros((g.height, g.width), dtype=bool)
    frame = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=(g.resized_height, g.resized_width))
    out = np.zeros((1, g.out_height, g.out_width), np.float32)
    out[0] = frame[0, 0, g.crop_top : g.crop_top + g.out_height, g.crop_left : g.crop_left + g.out_width].numpy()
    return out


def _torchray_point(row, smooth: float) -> torch.Tensor:
    """TorchRay's point from the stored maps: the maps in their place in the resized frame,
    resize_saliency (bilinear) to the original size, imsmooth, sum, argmax."""
    g = Geometry.from_row(row)
    maps = torch.from_numpy(row_maps(row))
    frame = torch.zeros((maps.shape[0], 1, g.resized_height, g.resized_width))
    frame[:, 0, g.crop_top : g.crop_top + g.out_height, g.crop_left : g.crop_left + g.out_width] = maps
    sal = resize_saliency(None, frame, (g.width, g.height), mode="bilinear")
    if smooth:
        sal = imsmooth(sal, sigma=smooth * min(sal.shape[2:]), padding_mode="constant")
    index = int(torch.argmax(sal.sum(0).view(-1)))
    return torch.tensor([index % g.width, index // g.width])


def _reference(out: str, voc_root: Path, smooth: float) -> dict[tuple[str, str], float]:
    """(method, subset) -> accuracy % by TorchRay, over the classes with a counted pair."""
    dataset = tvd.VOCDetection.__new__(tvd.VOCDetection)
    games = {(m, s): PointingGameBenchmark(dataset, difficult=s == "difficult")
             for m in ("method", "center") for s in ("all", "difficult")}
    for row in read_results(out).to_pylist():
        if row["error"] is not None:
            continue
        label = tvd.VOCDetection.parse_voc_xml(ET.parse(voc_root / "Annotations" / f"{row['key']}.xml").getroot())
        points = {"method": _torchray_point(row, smooth), "center": torch.tensor([row["width"] / 2, row["height"] / 2])}
        for (m, s), game in games.items():
            game.aggregate(game.evaluate(label, row["target"], points[m]), row["target"])
    acc = {}
    for key, game in games.items():
        present = (game.hits + game.misses) > 0
        acc[key] = 100 * float(PointingGame.class_accuracies.fget(game)[present].mean())
    return acc


@pytest.fixture(scope="module")
def voc_shards(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("voc")
    root = write_voc(tmp / "VOCdevkit", IMAGES, list(IMAGES))
    assert make_shards(["--from", "voc", str(root), "--out", str(tmp / "shards"), "--shard-size", "4", "--no-progress"]) == 0
    return root, sorted(str(p) for p in (tmp / "shards").glob("*.tar"))


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("crop", [None, 48])
def test_tables_match_torchray_benchmark(voc_shards, tmp_path: Path, crop, capsys) -> None:
    root, shards = voc_shards
    out = str(tmp_path / "attr")
    _write_parts(shards, out, "extremal", crop, _random_maps(crop or 0))
    assert main(["--results", out]) == 0  # on the session's Ray cluster, one task per part
    printed = capsys.readouterr().out
    table = pd.read_parquet(Path(out) / "pointing_game" / "pointing_game.parquet")
    assert table.equals(pd.read_csv(Path(out) / "pointing_game" / "pointing_game.csv"))
    got = {(r.method, r.subset): r.accuracy for r in table.itertuples()}
    ref = _reference(out, root, smooth=0.09)
    assert set(got) == {("extremal", "all"), ("extremal", "difficult"), ("center", "all"), ("center", "difficult")}
    for (m, s), acc in got.items():
        assert acc == pytest.approx(ref[("method" if m == "extremal" else m, s)], abs=1e-9), (m, s)
    pairs = table.set_index(["method", "subset"])["pairs"]
    # 12 rows, less 000002's cat (all its boxes difficult), less one error row per part with crop
    assert pairs[("center", "all")] == pairs[("extremal", "all")] == 11 - (2 if crop else 0)
    assert 0 < pairs[("extremal", "difficult")] < pairs[("extremal", "all")]
    assert "extremal" in printed and "center" in printed and f"({2 if crop else 0} error rows" in printed
    classes = pd.read_parquet(Path(out) / "pointing_game" / "pointing_game_classes.parquet")
    assert classes.groupby(["method", "subset"])["accuracy"].mean().to_dict() == pytest.approx(got)


def test_a_perfect_map_scores_100_and_center_matches_an_independent_count(voc_shards, tmp_path: Path, capsys) -> None:
    root, shards = voc_shards
    out = str(tmp_path / "oracle")
    _write_parts(shards, out, "oracle", None, _oracle_maps)
    assert main(["--results", out, "--local", "--out", str(tmp_path / "tables")]) == 0
    table = pd.read_csv(tmp_path / "tables" / "pointing_game.csv").set_index(["method", "subset"])
    assert table.loc[("oracle", "all"), "accuracy"] == 100.0 and table.loc[("oracle", "difficult"), "accuracy"] == 100.0
    # center, computed here without the package: Euclidean distance from (W/2, H/2) to every
    # ground-truth pixel, a hit below 15 px; per-class accuracy averaged over classes.
    per_class: dict[int, list[bool]] = {}
    for s in (s for shard in shards for s in iter_samples(shard)):
        w, h = s.meta["width"], s.meta["height"]
        for c in s.labels:
            boxes = [o for o in s.meta["objects"] if o["label"] == c]
            if all(o["difficult"] for o in boxes):
                continue
            ys, xs = np.mgrid[0:h, 0:w]
            inside = np.zeros((h, w), dtype=bool)
            for o in boxes:
                x0, y0, x1, y1 = o["box"]
                inside |= (xs >= x0 - 1) & (xs <= x1 - 1) & (ys >= y0 - 1) & (ys <= y1 - 1)
            dist = np.hypot(xs[inside] - w / 2, ys[inside] - h / 2)
            per_class.setdefault(c, []).append(bool(dist.min() < 15))
    expected = 100 * np.mean([np.mean(v) for v in per_class.values()])
    assert table.loc[("center", "all"), "accuracy"] == pytest.approx(expected)
    assert 0 < expected < 100  # the centre hits some pairs and misses others: the check has teeth

    # --config: the attribution job's output.uri; the same table
    cfg = tmp_path / "job.yaml"
    cfg.write_text(dump_config_yaml(tiny_config(shards, out)))
    assert main(["--config", str(cfg), "--local", "--out", str(tmp_path / "again")]) == 0
    assert pd.read_csv(tmp_path / "again" / "pointing_game.csv").set_index(["method", "subset"]).equals(table)


def test_a_job_of_the_center_map_method_is_not_mixed_with_the_baseline(voc_shards, tmp_path: Path) -> None:
    _, shards = voc_shards
    out = str(tmp_path / "c")
    _write_parts(shards, out, "center", None, _random_maps(5))
    assert main(["--results", out, "--local"]) == 0
    table = pd.read_csv(Path(out) / "pointing_game" / "pointing_game.csv").set_index(["method", "subset"])
    assert table.loc[("center (maps)", "all"), "pairs"] == table.loc[("center", "all"), "pairs"] == 11


def test_no_parts_exits_1_and_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["--results", str(tmp_path / "nothing"), "--local"]) == 1
    assert "no Parquet parts" in capsys.readouterr().err
    assert main(["--results", str(tmp_path), "--local", "--tolerance", "0"]) == 2
    assert main(["--results", str(tmp_path), "--set", "a.b=1"]) == 2


@pytest.mark.usefixtures("ray_cluster")
def test_the_demo_prints_the_pointing_game_by_the_protocol(demo_model_and_data, tmp_path: Path, capsys) -> None:
    """The demo (``jobs.demo``, shortened): the demo's boxes scored by the real protocol, the same
    table jobs.pointing_game writes."""
    from jobs.demo import main as demo

    assets = demo_model_and_data.assets
    out = str(tmp_path / "demo")
    assert demo(["--set", f"input.shards={assets.root}/shards/demo-{{000000..000003}}.tar",
                      "--set", f"model.checkpoint={assets.checkpoint}", "--set", f"output.uri={out}",
                      "--set", "extremal.max_iter=5"]) == 0
    printed = capsys.readouterr().out
    assert "pointing game (TorchRay's protocol" in printed and "inside the object's box" not in printed
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.startswith(("extremal ", "center "))}
    assert lines["extremal"][-1] == lines["center"][-1] == "32"  # every (image, label) pair, no difficult subset
    assert main(["--results", out, "--local"]) == 0
    table = pd.read_csv(Path(out) / "pointing_game" / "pointing_game.csv").set_index("method")
    assert f"{table.loc['extremal', 'accuracy']:.1f}" == lines["extremal"][0]
    assert f"{table.loc['center', 'accuracy']:.1f}" == lines["center"][0]
