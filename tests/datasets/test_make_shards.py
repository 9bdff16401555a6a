"""``python -m jobs.make_shards`` on small VOC, COCO and ImageFolder folders written here: every
image once, annotations intact, the shards readable by the pipeline's reader, resume."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from jobs.make_shards import main
from pipeline.datasets import VOC_CLASSES, SourceSample, voc_entries, write_dataset_shards
from pipeline.shards import decode_image, expand_shards, iter_samples
from pipeline.storage import Storage
from tests.datasets.layouts import VOC_IMAGES, VOC_SPLIT, coco_instances, write_coco, write_imagefolder, write_voc

# The 3x4 block at rows 2..4, columns 5..8 of a 20x20 image, as pycocotools encodes it.
BLOCK_RLE = "V33a000000j6"


def _samples(out: Path) -> list:
    return [s for url in expand_shards(str(out / "*.tar")) for s in iter_samples(url)]


def test_voc_every_image_once_with_boxes_and_difficult_flags(tmp_path: Path, capsys) -> None:
    root = write_voc(tmp_path / "VOCdevkit")
    out = tmp_path / "shards"
    assert main(["--from", "voc", str(root), "--split", "test", "--out", str(out), "--shard-size", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 samples, 20 classes in 2 shards (2 written, 0 already there)" in printed
    assert f"input.shards: {out}/voc-{{000000..000001}}.tar" in printed
    samples = _samples(out)
    assert [s.key for s in samples] == VOC_SPLIT  # the split, in order, each once; 000004 left out
    for s in samples:
        width, height, objects = VOC_IMAGES[s.key]
        assert s.error is None and decode_image(s.image_bytes).size == (width, height)
        names = sorted({VOC_CLASSES.index(n) for n, _, _ in objects})
        assert s.labels == names and s.label == names[0] and s.meta["label"] == names[0]
        assert s.meta["format"] == "voc" and s.meta["image"] == f"{s.key}.jpg"
        assert (s.meta["width"], s.meta["height"]) == (width, height)
        assert [(o["name"], o["box"], o["difficult"]) for o in s.meta["objects"]] == [(n, b, d) for n, b, d in objects]
    # .cls members are there for targets.mode: label
    with tarfile.open(out / "voc-000000.tar") as tar:
        assert tar.getnames()[:3] == ["000001.jpg", "000001.cls", "000001.json"]
    # Without --split: every annotation.
    assert main(["--from", "voc", str(root), "--out", str(tmp_path / "all"), "--no-progress"]) == 0
    assert [s.key for s in _samples(tmp_path / "all")] == sorted(VOC_IMAGES)


def test_coco_polygons_and_rle_kept_and_image_order(tmp_path: Path) -> None:
    images, ann = write_coco(tmp_path / "coco", BLOCK_RLE)
    out = tmp_path / "shards"
    # The default annotations path: <dir>/annotations/instances_<name>.json
    assert main(["--from", "coco", str(images), "--out", str(out), "--shard-size", "10", "--no-progress"]) == 0
    samples = _samples(out)
    ref = coco_instances()
    by_id = sorted(ref["images"], key=lambda im: im["id"])
    assert [s.meta["id"] for s in samples] == [im["id"] for im in by_id]  # image-id order, each once
    assert [s.key for s in samples] == [im["file_name"].split(".")[0] for im in by_id]
    # categories sorted by id: person (1) -> 0, dog (18) -> 1, toothbrush (90) -> 2
    labels = {s.meta["id"]: s.labels for s in samples}
    assert labels == {7: [2], 11: [], 42: [0, 1], 99: [0]}
    no_objects = next(s for s in samples if s.meta["id"] == 11)
    assert no_objects.label is None and no_objects.error is None  # no .cls member, no label
    segs = {o["category_id"]: o["segmentation"] for s in samples for o in s.meta["objects"] if s.meta["id"] == 42}
    assert segs[1] == ref["annotations"][0]["segmentation"] and segs[18] == ref["annotations"][1]["segmentation"]
    crowd = next(s for s in samples if s.meta["id"] == 7).meta["objects"][0]
    assert crowd["iscrowd"] == 1 and crowd["segmentation"] == ref["annotations"][2]["segmentation"]
    assert next(s for s in samples if s.meta["id"] == 99).meta["objects"][0]["segmentation"]["counts"] == BLOCK_RLE
    assert next(s for s in samples if s.meta["id"] == 99).image_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--from", "coco", str(images), "--annotations", str(tmp_path / "nope.json"),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_imagefolder_tree(tmp_path: Path) -> None:
    files = write_imagefolder(tmp_path / "tree")
    out = tmp_path / "shards"
    assert main(["--from", "imagefolder", str(tmp_path / "tree"), "--out", str(out), "--shard-size", "2", "--no-progress"]) == 0
    samples = _samples(out)
    classes = sorted(set(files.values()))
    assert sorted(s.meta["image"] for s in samples) == sorted(files)  # every image once, not notes.txt
    for s in samples:
        assert s.error is None and "." not in s.key.rpartition("/")[2]
        assert s.label == classes.index(files[s.meta["image"]]) and s.labels == [s.label]
        img = decode_image(s.image_bytes)
        assert img.size == (24, 20) == (s.meta["width"], s.meta["height"])
    bmp = next(s for s in samples if s.meta["image"] == "dog/d.bmp")
    assert bmp.image_bytes[:8] == b"\x89PNG\r\n\x1a\n"  # re-encoded losslessly: the reader does not take BMP
    original = np.asarray(decode_image((tmp_path / "tree/dog/d.bmp").read_bytes()))
    assert np.array_equal(np.asarray(decode_image(bmp.image_bytes)), original)
    jpg = next(s for s in samples if s.meta["image"] == "cat/a.jpg")
    assert jpg.image_bytes == (tmp_path / "tree/cat/a.jpg").read_bytes()  # copied, not re-encoded


def test_resume_keeps_finished_shards_and_rewrites_the_interrupted_one(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOCdevkit")
    samples, _ = voc_entries(str(root))
    out = tmp_path / "shards"

    def broken(s: SourceSample) -> SourceSample:
        def load():
            raise OSError("disk went away")
        return SourceSample(s.key, load)

    # First run dies on a sample of the second shard: the first shard is complete, nothing else.
    with pytest.raises(ValueError, match="sample '000004'.*disk went away"):
        write_dataset_shards([*samples[:3], broken(samples[3]), samples[4]], str(out), shard_size=2,
                             prefix="voc", source={"x": 1}, progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["voc-000000.tar"]
    first = out / "voc-000000.tar"
    stamp = first.stat().st_mtime_ns
    os.utime(first, ns=(stamp - 10**9, stamp - 10**9))  # an old mtime: a rewrite would change it
    # A half-written shard from a killed run (a temp name) is neither trusted nor in the way.
    (out / "voc-000001.tar.tmp-deadbeef").write_bytes(b"partial")

    report = write_dataset_shards(samples, str(out), shard_size=2, prefix="voc", source={"x": 1}, progress=False)
    assert report.skipped == [str(out / "voc-000000.tar")] and len(report.written) == 2
    assert first.stat().st_mtime_ns == stamp - 10**9
    assert [s.key for s in _samples(out)] == sorted(VOC_IMAGES)
    # Same settings again: nothing to do. Other settings: refused (the shards would not line up).
    again = write_dataset_shards(samples, str(out), shard_size=2, prefix="voc", source={"x": 1}, progress=False)
    assert again.written == [] and len(again.skipped) == 3
    with pytest.raises(ValueError, match="other settings"):
        write_dataset_shards(samples, str(out), shard_size=3, prefix="voc", source={"x": 1}, progress=False)
    params = json.loads((out / "make_shards.json").read_text())
    assert params["shard_size"] == 2 and params["samples"] == 5


def test_cli_refuses_other_settings_with_exit_2(tmp_path: Path, capsys) -> None:
    root = write_voc(tmp_path / "VOCdevkit")
    out = str(tmp_path / "shards")
    assert main(["--from", "voc", str(root), "--out", out, "--shard-size", "2", "--no-progress"]) == 0
    assert main(["--from", "voc", str(root), "--out", out, "--shard-size", "2", "--no-progress"]) == 0
    assert "(0 written, 3 already there)" in capsys.readouterr().out
    assert main(["--from", "voc", str(root), "--out", out, "--shard-size", "4", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["--from", "voc", str(tmp_path / "empty"), "--out", out, "--no-progress"]) == 2


def test_voc_from_s3_to_s3_and_resume(tmp_path: Path, s3_bucket: str, s3_options: dict) -> None:
    """Any fsspec URL on both sides: a VOC folder in a bucket, shards written to a bucket (one PUT
    per shard), read back by the pipeline's reader; a second run writes nothing."""
    import fsspec

    root = write_voc(tmp_path / "VOCdevkit")
    fs = fsspec.filesystem("s3", **s3_options)
    fs.put(str(root), f"{s3_bucket[5:]}/VOC2007", recursive=True)
    samples, _ = voc_entries(f"{s3_bucket}/VOC2007", "test", Storage(s3_options))
    out = f"{s3_bucket}/shards"
    report = write_dataset_shards(samples, out, shard_size=3, prefix="voc", storage=Storage(s3_options), progress=False)
    assert report.pattern() == f"{out}/voc-{{000000..000001}}.tar" and len(report.written) == 2
    got = [s for url in expand_shards(report.pattern()) for s in iter_samples(url, Storage(s3_options))]
    assert [s.key for s in got] == VOC_SPLIT and all(s.error is None and s.labels for s in got)
    again = write_dataset_shards(samples, out, shard_size=3, prefix="voc", storage=Storage(s3_options), progress=False)
    assert again.written == [] and again.skipped == report.shards
