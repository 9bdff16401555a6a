"""demo.model: the known-answer synthetic data, the demo CNN, and the cached shard/checkpoint
assets (read back with webdataset and tarfile)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from demo import (
    CLASSES,
    DEMO_MEAN,
    DEMO_STD,
    build_demo_model,
    ensure_demo_assets,
    make_synthetic_images,
    predict,
    train_demo_model,
)
from pipeline.models import load_model
from tests.fixtures_demo import DemoBundle
from tests.pipeline.conftest import model_section


def test_synthetic_images_are_deterministic() -> None:
    a = make_synthetic_images(16, seed=3)
    b = make_synthetic_images(16, seed=3)
    c = make_synthetic_images(16, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    images, labels, boxes = a
    assert images.shape == (16, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (16,) and boxes.shape == (16, 4)
    assert np.bincount(labels, minlength=4).tolist() == [4, 4, 4, 4]  # balanced


@pytest.mark.parametrize("size", [64, 96])
def test_boxes_inside_image_and_object_at_box(size: int) -> None:
    images, labels, boxes = make_synthetic_images(200, size=size, num_classes=6, seed=1)
    x0, y0, x1, y1 = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
    sides = x1 - x0
    assert (sides == y1 - y0).all()
    assert sides.min() >= round(0.12 * size) and sides.max() <= round(0.20 * size)
    # The object's colour is at the box: at its centre for the filled shapes, somewhere on the
    # (thin, anti-aliased) band for the ring.
    for img, label, (bx0, by0, bx1, by1) in zip(images, labels, boxes):
        shape, colour = CLASSES[label]
        diff = np.abs(img[by0:by1, bx0:bx1].astype(float) - np.array(colour) * 255).max(-1)
        if shape == "ring":
            assert diff.min() < 70
        else:
            assert diff[(by1 - by0) // 2, (bx1 - bx0) // 2] < 70, shape


def test_unknown_class_count_is_refused() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_images(4, num_classes=len(CLASSES) + 1)


def test_training_is_deterministic() -> None:
    images, labels, _ = make_synthetic_images(64, seed=5)
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    a = train_demo_model(images, labels, epochs=1, seed=0, num_threads=1).state_dict()
    b = train_demo_model(images, labels, epochs=1, seed=0, num_threads=1).state_dict()
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert torch.get_num_threads() == threads
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_model_runs_at_other_resolutions() -> None:
    model = build_demo_model(num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
        assert model(torch.zeros(1, 3, 100, 80)).shape == (1, 3)


def test_trained_model_is_accurate_on_heldout(demo_model_and_data: DemoBundle) -> None:
    d = demo_model_and_data
    acc = (predict(d.model, d.heldout_images) == d.heldout_labels).mean()
    assert acc >= 0.9, acc


def test_trained_model_needs_the_object(demo_model_and_data: DemoBundle) -> None:
    """Painting the object's box with the image's median colour leaves ~chance accuracy: the
    decision comes from the object, not the background."""
    d = demo_model_and_data
    erased = d.heldout_images.copy()
    for img, (x0, y0, x1, y1) in zip(erased, d.heldout_boxes):
        img[y0:y1, x0:x1] = np.median(img.reshape(-1, 3), axis=0).astype(np.uint8)
    acc = (predict(d.model, erased) == d.heldout_labels).mean()
    assert acc < 0.5, acc


def test_shards_are_webdataset_readable(demo_model_and_data: DemoBundle) -> None:
    assets = demo_model_and_data.assets
    assert [Path(p).name for p in assets.shards] == [f"demo-{i:06d}.tar" for i in range(4)]
    seen = []
    for path in assets.shards:
        for sample in wds.WebDataset(path, shardshuffle=False):
            key = sample["__key__"]
            assert "." not in key
            assert {"png", "cls", "json"} <= set(sample)
            meta = json.loads(sample["json"])
            label = int(sample["cls"].decode())
            assert meta["label"] == label == assets.labels[key]
            assert tuple(meta["box"]) == assets.boxes[key]
            img = Image.open(io.BytesIO(sample["png"]))
            assert img.size == (meta["width"], meta["height"]) == (64, 64) and img.mode == "RGB"
            seen.append(key)
    assert len(seen) == len(set(seen)) == 32 and set(seen) == set(assets.boxes)


def test_shard_members_are_adjacent_per_sample(demo_model_and_data: DemoBundle) -> None:
    with tarfile.open(demo_model_and_data.assets.shards[0]) as tar:
        names = tar.getnames()
    keys = [n.split(".", 1)[0] for n in names]
    # Each key forms one contiguous run of its three members.
    runs = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    assert len(runs) == len(set(runs)) == 8
    assert sorted(n.split(".", 1)[1] for n in names[:3]) == ["cls", "json", "png"]


def test_checkpoint_loads_through_load_model(demo_model_and_data: DemoBundle) -> None:
    """The factory string + checkpoint path + demo normalisation, as the demo job configures it,
    classify the shard images decoded from PNG."""
    assets = demo_model_and_data.assets
    loaded = load_model(
        model_section(factory=assets.factory, checkpoint=assets.checkpoint, mean=DEMO_MEAN, std=DEMO_STD)
    )
    assert loaded.preprocess.resize is None and loaded.preprocess.crop is None
    inputs, labels = [], []
    for sample in wds.WebDataset(assets.shards, shardshuffle=False):
        x, geom = loaded.preprocess(Image.open(io.BytesIO(sample["png"])))
        assert (geom.out_width, geom.out_height) == (64, 64)
        inputs.append(x)
        labels.append(int(sample["cls"]))
    with torch.no_grad():
        predicted = loaded.model(torch.stack(inputs)).argmax(1)
    assert (predicted == torch.tensor(labels)).float().mean() >= 0.9


def test_second_call_uses_the_cache(demo_model_and_data: DemoBundle) -> None:
    first = demo_model_and_data.assets
    files = [*first.shards, first.checkpoint, os.path.join(first.root, "stamp.json")]
    before = {f: os.stat(f).st_mtime_ns for f in files}
    again = ensure_demo_assets(first.root)
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    assert again.shards == first.shards and again.boxes == first.boxes and again.labels == first.labels


def test_incomplete_or_changed_build_is_rebuilt(tmp_path: Path) -> None:
    small = dict(num_shards=2, per_shard=2, train_images=32, epochs=1, num_threads=1)
    a = ensure_demo_assets(tmp_path, **small)
    os.remove(a.shards[1])  # as if the build had been interrupted
    b = ensure_demo_assets(tmp_path, **small)
    assert os.path.exists(b.shards[1]) and b.boxes == a.boxes
    c = ensure_demo_assets(tmp_path, **{**small, "per_shard": 3})  # parameters changed
    assert len(c.boxes) == 6
    with tarfile.open(c.shards[0]) as tar:
        assert len(tar.getnames()) == 9
    # Atomic writes leave no temp files behind.
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    state = torch.load(c.checkpoint, map_location="cpu", weights_only=True)
    build_demo_model(4).load_state_dict(state)
