"""The pointing game's pure functions against TorchRay 1.0.0.2's benchmark code, the reference:
``PointingGame`` (hit rule, tally), ``PointingGameBenchmark`` (VOC difficult boxes and EBP's
difficult subset), ``voc_as_mask`` / ``coco_as_mask`` (ground truth), ``resize_saliency`` +
``imsmooth`` (the extremal-perturbation point)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchray.attribution.common import resize_saliency
from torchray.benchmark import datasets as trd
from torchray.benchmark.pointing_game import PointingGame, PointingGameBenchmark
from torchray.utils import imsmooth
from torchvision import datasets as tvd

from extremal_core.methods import Smoothing
from pipeline.datasets.voc import parse_voc_xml
from pipeline.evaluation.difficult import in_difficult_subset, load_flags
from pipeline.geometry import Geometry
from pipeline.metrics.ground_truth import class_mask, image_name
from pipeline.metrics.pointing_game import Tally, center_point, is_hit, saliency_point
from tests.datasets.layouts import voc_xml


def _torchray_hit(mask: np.ndarray, point) -> bool:
    return PointingGame(1, tolerance=15).evaluate(torch.from_numpy(mask), point) == 1


@pytest.mark.parametrize(
    "dx,dy,hit",
    [(15, 0, False), (14.9, 0, True), (0, -15, False), (0, 14.99, True), (9, 12, False), (9, 11.9, True),
     (-10.6, 10.6, True), (-10.61, 10.61, False), (0, 0, True)],
)
def test_tolerance_is_strict_at_15_px(dx: float, dy: float, hit: bool) -> None:
    mask = np.zeros((60, 70), dtype=bool)
    mask[30, 35] = True  # one ground-truth pixel
    point = (35 + dx, 30 + dy)
    assert is_hit(mask, point) is hit
    assert _torchray_hit(mask, torch.tensor(point)) is hit


def test_hits_match_torchray_on_random_masks_and_points() -> None:
    rng = np.random.default_rng(0)
    disagree = 0
    for trial in range(400):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        mask = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(0, 3))):  # a union of boxes, sometimes empty
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            mask[y0 : y0 + int(rng.integers(1, 12)), x0 : x0 + int(rng.integers(1, 12))] = True
        if trial % 3 == 0:  # integer pixel (an argmax), else fractional (the center of an odd size)
            point = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            ref = torch.tensor(point)
        else:
            point = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
            ref = torch.tensor(point, dtype=torch.float32)
            point = tuple(float(v) for v in ref)  # the same float32 numbers
        disagree += is_hit(mask, point) != _torchray_hit(mask, ref)
    assert disagree == 0


def test_tally_matches_torchray_aggregation() -> None:
    rng = np.random.default_rng(1)
    ref = PointingGame(6, tolerance=15)
    ours = Tally()
    for _ in range(300):
        c, hit = int(rng.integers(0, 6)), bool(rng.random() < 0.6)
        ref.aggregate(+1 if hit else -1, c)
        ours.add(c, hit)
    assert [ours.hits.get(c, 0) for c in range(6)] == ref.hits.int().tolist()
    assert [ours.misses.get(c, 0) for c in range(6)] == ref.misses.int().tolist()
    assert np.allclose(list(ours.class_accuracies().values()), ref.class_accuracies.numpy())
    assert ours.accuracy() == pytest.approx(float(ref.accuracy))
    # Where TorchRay disagrees with itself: it averages over every class of the dataset, an absent
    # class counting 0 %; we average over the classes with a pair (same number when all occur).
    ref2, ours2 = PointingGame(6, tolerance=15), Tally()
    for c, hit in [(0, True), (0, False), (3, True)]:
        ref2.aggregate(+1 if hit else -1, c)
        ours2.add(c, hit)
    assert ours2.accuracy() == pytest.approx(0.75)
    assert float(ref2.accuracy) == pytest.approx(1.5 / 6)
    assert ours2.accuracy() == pytest.approx(float(ref2.class_accuracies[[0, 3]].mean()))


def test_point_of_extremal_masks_matches_torchray_resize_and_smooth() -> None:
    """Masks at the model input (shorter side resized to 32, no crop) -> each resized bilinearly to
    the original size, smoothed with sigma = 0.09 min(H, W), summed, argmax: TorchRay's
    extremal_perturbation(resize=, smooth=0.09) + mask.sum(0) + _saliency_to_point."""
    rng = np.random.default_rng(2)
    for width, height in [(75, 50), (50, 81), (64, 64), (120, 33)]:
        g = Geometry.of(width, height, resize=32, crop=None)
        for _ in range(5):
            coarse = torch.from_numpy(rng.random((4, 1, 5, 5), dtype=np.float32))
            maps = torch.nn.functional.interpolate(coarse, size=(g.out_height, g.out_width), mode="bilinear")
            ref = resize_saliency(None, maps, (width, height), mode="bilinear")
            ref = imsmooth(ref, sigma=0.09 * min(ref.shape[2:]), padding_mode="constant").sum(dim=0, keepdim=True)
            index = int(torch.argmax(ref.view(-1)))
            expected = (index % width, index // width)
            assert saliency_point(maps[:, 0].numpy(), g, Smoothing(0.09)) == expected
        # no smoothing: the argmax of the summed resized maps
        ref = resize_saliency(None, maps, (width, height), mode="bilinear").sum(0)[0]
        index = int(torch.argmax(ref.view(-1)))
        assert saliency_point(maps[:, 0].numpy(), g) == (index % width, index // width)


def test_point_with_a_centre_crop_and_ties() -> None:
    g = Geometry.of(80, 60, resize=None, crop=40)  # the map covers x 20..59, y 10..49
    maps = np.zeros((1, 40, 40), np.float32)
    maps[0, 5, 7] = 1.0
    assert saliency_point(maps, g) == (27, 15)
    # Ties: the first maximum in row-major order (torch.argmax), here the upper of two.
    maps[0, 30, 2] = 1.0
    assert saliency_point(maps, g) == (27, 15)
    maps[0, 2, 30] = 1.0
    assert saliency_point(maps, g) == (50, 12)
    assert center_point(81, 60) == (40.5, 30.0)


def _voc_label(image_id: str, width: int, height: int, objects) -> dict:
    import xml.etree.ElementTree as ET

    return tvd.VOCDetection.parse_voc_xml(ET.fromstring(voc_xml(f"{image_id}.jpg", width, height, objects)))


def test_voc_ground_truth_and_difficult_subset_match_torchray_benchmark() -> None:
    """Random VOC annotations with difficult boxes, on image names of EBP's VOC07 flag file (and
    names missing from it), random points: the same +1 / -1 / 0 as PointingGameBenchmark, for all
    pairs and the difficult subset."""
    dataset = tvd.VOCDetection.__new__(tvd.VOCDetection)  # the class is all the benchmark looks at
    bench, bench_diff = PointingGameBenchmark(dataset), PointingGameBenchmark(dataset, difficult=True)
    flags = load_flags("voc")
    assert flags is not None and len(flags) == 4952
    names = sorted(flags)[:60] + [f"missing{i}" for i in range(10)]
    rng = np.random.default_rng(3)
    counted = {0: 0, 1: 0, -1: 0}
    for i, name in enumerate(names):
        width, height = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            cls = trd.VOC_CLASSES[int(rng.integers(0, 20))] if i % 2 else trd.VOC_CLASSES[[8, 11, 17][i % 3]]
            x0, y0 = int(rng.integers(1, width)), int(rng.integers(1, height))
            box = [x0, y0, min(x0 + int(rng.integers(0, 30)), width), min(y0 + int(rng.integers(0, 30)), height)]
            objects.append((cls, box, bool(rng.random() < 0.35)))
        label = _voc_label(name, width, height, objects)
        meta = parse_voc_xml(voc_xml(f"{name}.jpg", width, height, objects).encode())
        for class_id in trd.voc_as_class_ids(label):
            mask = class_mask(meta, class_id, width, height)
            ref_mask = trd.voc_as_mask(label, class_id).numpy()
            assert np.array_equal(mask if mask is not None else ref_mask, ref_mask)
            point = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            ours = 0 if mask is None else (1 if is_hit(mask, point) else -1)
            assert ours == bench.evaluate(label, class_id, torch.tensor(point))
            diff = ours if in_difficult_subset(flags, image_name(meta, name), class_id) else 0
            assert diff == bench_diff.evaluate(label, class_id, torch.tensor(point))
            counted[diff] += 1
    assert min(counted.values()) > 5  # every outcome occurred: the comparison covered each branch


def test_coco_ground_truth_matches_torchray_coco_as_mask(tmp_path) -> None:
    """The union of a class's instances (polygons, uncompressed and compressed RLE) from the shard
    json equals TorchRay's coco_as_mask on the same instances file (pycocotools' annToMask)."""
    pytest.importorskip("pycocotools")
    from pipeline.datasets import coco_entries
    from tests.datasets.layouts import write_coco

    images, ann = write_coco(tmp_path, "V33a000000j6")
    dataset = tvd.CocoDetection(str(images), str(ann))
    samples, _ = coco_entries(str(images))
    metas = {s.load()[2]["id"]: s.load()[2] for s in samples}
    compared = 0
    for image_id in dataset.ids:
        label = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=image_id))
        meta = metas[image_id]
        for category_id in sorted({a["category_id"] for a in label}):
            # TorchRay indexes COCO's 80 categories; ours are this file's 3 categories in id order
            class_id = {1: 0, 18: 1, 90: 2}[category_id]
            ref = trd.coco_as_mask(dataset, label, trd._COCO_CLASS_TO_INDEX[category_id]).numpy()
            ours = class_mask(meta, class_id, meta["width"], meta["height"])
            assert ours is not None and ours.any() and np.array_equal(ours, ref)
            compared += 1
    assert compared == 4


def test_single_box_ground_truth_of_the_demo_shards() -> None:
    """The demo's json: a half-open ``box`` [x0, y0, x1, y1] of its one ``label``."""
    meta = {"label": 2, "box": [3, 4, 7, 6], "width": 10, "height": 8}
    expected = np.zeros((8, 10), dtype=bool)
    expected[4:6, 3:7] = True
    assert np.array_equal(class_mask(meta, 2, 10, 8), expected)
    assert class_mask(meta, 1, 10, 8) is None and class_mask({"label": 2}, 2, 10, 8) is None
