"""COCO segmentations without pycocotools: known masks, and pycocotools itself where installed."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.coco_masks import (
    decode_rle_string,
    encode_rle_string,
    mask_to_rle,
    rle_to_mask,
    segmentation_mask,
)


def test_compressed_rle_of_a_known_mask() -> None:
    # pycocotools.mask.encode of a 3x4 block at rows 2..4, columns 5..8 of a 20x20 image
    expected = np.zeros((20, 20), dtype=bool)
    expected[2:5, 5:9] = True
    assert decode_rle_string("V33a000000j6") == [102, 3, 17, 3, 17, 3, 17, 3, 235]
    assert np.array_equal(segmentation_mask({"size": [20, 20], "counts": "V33a000000j6"}, 20, 20), expected)
    assert np.array_equal(segmentation_mask({"size": [20, 20], "counts": b"V33a000000j6"}, 20, 20), expected)
    assert encode_rle_string(mask_to_rle(expected)) == "V33a000000j6"


def test_uncompressed_rle_is_column_major_zeros_first() -> None:
    mask = segmentation_mask({"size": [3, 4], "counts": [1, 2, 5, 1, 3]}, 3, 4)
    expected = np.zeros((3, 4), dtype=bool)
    expected[1:3, 0] = True  # pixels 1, 2 of column 0
    expected[2, 2] = True  # pixel 8 = column 2, row 2
    assert np.array_equal(mask, expected)
    assert mask_to_rle(mask) == [1, 2, 5, 1, 3]
    assert mask_to_rle(np.ones((2, 2), dtype=bool)) == [0, 4]  # starts with an empty run of 0s
    with pytest.raises(ValueError, match="covers 11 pixels"):
        rle_to_mask([1, 2, 5, 1, 2], 3, 4)


def test_polygon_of_a_rectangle() -> None:
    # pycocotools: the square x 4..14, y 5..13 covers columns 4..13 and rows 5..12 (80 pixels)
    mask = segmentation_mask([[4, 5, 14, 5, 14, 13, 4, 13]], 30, 40)
    expected = np.zeros((30, 40), dtype=bool)
    expected[5:13, 4:14] = True
    assert np.array_equal(mask, expected)
    # two polygons: their union
    two = segmentation_mask([[4, 5, 14, 5, 14, 13, 4, 13], [20, 20, 30, 20, 30, 25, 20, 25]], 30, 40)
    assert two.sum() == 80 + 50 and np.array_equal(two[:15], expected[:15])


def test_polygons_and_rle_match_pycocotools() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        k = int(rng.integers(3, 9))
        poly = (rng.random(2 * k) * np.array([w + 4, h + 4] * k) - 2).round(int(rng.integers(0, 3))).tolist()
        ref = mask_api.decode(mask_api.merge(mask_api.frPyObjects([poly], h, w))).astype(bool)
        assert np.array_equal(segmentation_mask([poly], h, w), ref), poly
        counts = mask_api.encode(np.asfortranarray(ref.astype(np.uint8)))["counts"].decode()
        assert encode_rle_string(mask_to_rle(ref)) == counts
        assert np.array_equal(segmentation_mask({"size": [h, w], "counts": counts}, h, w), ref)
