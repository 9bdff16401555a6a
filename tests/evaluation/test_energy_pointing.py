"""The energy-based pointing game (Score-CAM's proportion of the map's positive energy inside
the ground truth): hand-computed shares, the x/y convention on an asymmetric box, the tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.pointing_run import PartResult
from pipeline.evaluation.pointing_table import class_table, summary_table
from pipeline.geometry import Geometry
from pipeline.metrics.energy_pointing import EnergyTally, energy_share
from pipeline.metrics.ground_truth import class_mask
from pipeline.metrics.pointing_game import resize_to_original


def test_asymmetric_box_fixes_the_x_y_convention() -> None:
    """A wide, short box at x 10..29, y 2..5 in a 40 x 24 image (box = [x0, y0, x1, y1]): a map
    whose energy fills exactly that box scores 1; the same map transposed into the box's mirror
    (x <-> y) scores what its overlap says."""
    width, height = 40, 24
    truth = class_mask({"box": [10, 2, 30, 6], "label": 3}, 3, width, height)
    assert truth.shape == (height, width) and truth.sum() == 20 * 4
    assert truth[2:6, 10:30].all()
    sal = np.zeros((height, width), np.float32)
    sal[2:6, 10:30] = 1.0
    assert energy_share(sal, truth) == 1.0
    swapped = np.zeros((height, width), np.float32)
    swapped[10:30, 2:6] = 1.0  # rows 10..23 exist: 14 x 4 = 56 pixels, none inside the box
    assert energy_share(swapped, truth) == 0.0
    # Half the energy inside, the other half below it; negative values are no energy at all.
    half = np.full((height, width), -5.0, np.float32)
    half[2:6, 10:30] = 1.0
    half[6:10, 10:30] = 1.0
    assert energy_share(half, truth) == pytest.approx(0.5)
    # A map summed over its M maps first; a map without positive energy: 0.
    assert energy_share(np.stack([sal, sal * 3]), truth) == 1.0
    assert energy_share(-sal, truth) == 0.0


def test_share_at_the_original_size_of_a_row() -> None:
    """The map the runner scores: placed back and resized to the original size (an 80 x 60 image,
    a 40 px centre crop covering x 20..59, y 10..49), then the share inside a VOC box."""
    g = Geometry.of(80, 60, resize=None, crop=40)
    maps = np.zeros((1, 40, 40), np.float32)
    maps[0, 0:10, 0:20] = 2.0  # original x 20..39, y 10..19
    maps[0, 30:40, 0:40] = 1.0  # original y 40..49, all x of the crop
    full = resize_to_original(maps, g)
    meta = {"format": "voc", "objects": [{"label": 5, "box": [21, 11, 40, 20], "difficult": False}]}
    truth = class_mask(meta, 5, 80, 60)  # VOC boxes are 1-based inclusive: x 20..39, y 10..19
    assert energy_share(full, truth) == pytest.approx(400 / (400 + 400))


def test_tally_and_tables() -> None:
    e = EnergyTally()
    for c, s in [(1, 0.2), (1, 0.4), (7, 1.0)]:
        e.add(c, s)
    assert e.class_means() == pytest.approx({1: 0.3, 7: 1.0})
    assert e.mean() == pytest.approx(0.65)
    assert math.isnan(EnergyTally().mean())
    result = PartResult()
    for c, hit in [(1, True), (1, False), (7, True)]:
        result.tally("grad_cam", "all").add(c, hit)
        result.tally("center", "all").add(c, False)
    result.energy("grad_cam", "all").merge(e)
    summary = {r["method"]: r for r in summary_table(result).to_pylist()}
    assert summary["grad_cam"]["energy"] == pytest.approx(65.0)
    assert math.isnan(summary["center"]["energy"])
    per_class = {(r["method"], r["class"]): r["energy"] for r in class_table(result).to_pylist()}
    assert per_class[("grad_cam", 1)] == pytest.approx(30.0)
