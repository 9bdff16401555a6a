"""``targets.mode: labels``: one row per class present in a sample (the pointing game's protocol),
on real shards written by ``jobs.make_shards`` and by hand, through ``process_shard`` (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.make_shards import main as make_shards
from pipeline.io.parts import read_results
from pipeline.models import load_model
from pipeline.targets import pick_targets
from pipeline.tasks import process_shard
from tests.datasets.layouts import VOC_IMAGES, write_voc
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import encode_image, synthetic_image, write_shard


@pytest.fixture(scope="module")
def tiny_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(tiny_config("unused.tar", "unused", "model.num_classes=20").model)
    torch.set_num_threads(threads)


def test_pick_targets_labels_mode() -> None:
    scores = torch.zeros(5, 4)
    picked = pick_targets(scores, [1, 3, None, 2, None], "labels", label_lists=[[2, 0, 2], None, None, [], [1, 7]])
    assert [[t.target for t in ts] for ts in picked] == [[2, 0], [3], [None], [None], [1, 7]]
    assert all(t.source == "labels" for ts in picked for t in ts)
    assert [t.error for t in picked[0] + picked[1]] == [None, None, None]  # list first, else the label
    assert "no labels" in picked[2][0].error and "no class present" in picked[3][0].error
    assert picked[4][0].error is None and "out of range" in picked[4][1].error
    # the other modes ignore the lists
    assert [[t.target for t in ts] for ts in pick_targets(scores[:2], [1, 3], "label", label_lists=[[0, 2], None])] == [[1], [3]]


def test_labels_mode_rows_from_make_shards_voc(tmp_path: Path, tiny_model) -> None:
    root = write_voc(tmp_path / "VOCdevkit")
    assert make_shards(["--from", "voc", str(root), "--out", str(tmp_path / "shards"), "--no-progress"]) == 0
    shard = str(tmp_path / "shards" / "voc-000000.tar")
    cfg = tiny_config(shard, str(tmp_path / "out"), "targets.mode=labels", "model.num_classes=20")
    process_shard(shard, cfg, tiny_model)
    df = read_results(str(tmp_path / "out")).to_pandas()
    from pipeline.datasets import VOC_CLASSES

    expected = [(k, c) for k, (_, _, objs) in VOC_IMAGES.items() for c in sorted({VOC_CLASSES.index(n) for n, _, _ in objs})]
    assert list(zip(df["key"], df["target"])) == expected  # one row per (image, class present), in order
    assert not df.duplicated(["key", "target"]).any()
    assert (df["target_source"] == "labels").all() and df["error"].isna().all()
    # the rows of an image with two classes are two explanations, each with its own target
    two = df[df["key"] == "000001"]
    assert sorted(two["target"]) == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]


def test_labels_mode_without_a_list_falls_back_to_the_label(tmp_path: Path, tiny_model) -> None:
    img = encode_image(synthetic_image(0), "jpg")
    shard = write_shard(tmp_path / "mixed-000000.tar", [
        {"__key__": "listed", "jpg": img, "cls": 3, "json": {"labels": [3, 5]}},
        {"__key__": "single", "jpg": img, "cls": 4},
        {"__key__": "empty", "jpg": img, "json": {"labels": []}},
        {"__key__": "bad", "jpg": img, "json": {"labels": ["dog"]}},
    ])
    cfg = tiny_config(shard, str(tmp_path / "out"), "targets.mode=labels", "model.num_classes=20")
    process_shard(shard, cfg, tiny_model)
    rows = read_results(str(tmp_path / "out")).to_pylist()
    got = [(r["key"], r["target"], r["error"] is None) for r in rows]
    assert got == [("listed", 3, True), ("listed", 5, True), ("single", 4, True), ("empty", None, False), ("bad", None, False)]
    assert "labels" in rows[-1]["error"]
