"""The bad-input catalogue: each case a real shard through the real task (no Ray; the cheap
``center`` method) with its defined outcome: a row (an image Pillow decodes, whatever its mode or
bit depth), an error row whose reason names the problem (the row's ``key`` names the sample), or
a shard that fails with ShardReadError (quarantined by the driver: see test_bad_shards_are_
quarantined_in_the_manifest) with nothing committed."""

from __future__ import annotations

import io
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.commit import part_uri
from pipeline.images import decode_image
from pipeline.models import load_model
from pipeline.shards import ShardReadError
from pipeline.tasks import process_shard
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import image_samples, synthetic_image, write_shard


def _rows(tmp_path: Path, model, samples: list[dict], *overrides: str) -> dict[str, list]:
    """Run one shard of ``samples`` (plus a good sample at each end) -> the rows of ``samples``
    as columns (column name -> values; None for null)."""
    good = image_samples(7, 2)
    shard = write_shard(tmp_path / "case-000000.tar", [good[0], *samples, good[1]])
    cfg = tiny_config(shard, str(tmp_path / "out"), "method.name=center", *overrides)
    marker = process_shard(shard, cfg, model)
    table = pq.read_table(part_uri(cfg.output.uri, shard))  # plain pyarrow reads it
    assert marker["rows"] == table.num_rows
    cols = {name: table.column(name).to_pylist() for name in ("key", "error", "target")}
    assert cols["key"][0] == good[0]["__key__"] and cols["key"][-1] == good[1]["__key__"]
    assert cols["error"][0] is None and cols["error"][-1] is None  # the good samples survive
    return {name: values[1:-1] for name, values in cols.items()}


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


_RAMP16 = (np.arange(40 * 48).reshape(40, 48) * 34).astype(np.uint16)  # 0 .. 65246
_SPREAD = np.linspace(-5, 5, 1920, dtype=np.float32).reshape(40, 48)
_FRAMES = [Image.new("RGB", (48, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]

# (member extension, bytes, expected mean of the decoded RGB image +- 3, or None: only "a row")
IMAGES = {
    "1-bit png": ("png", lambda: _save(Image.new("1", (48, 40), 1), "PNG"), 255),
    "L jpeg": ("jpg", lambda: _save(Image.new("L", (48, 40), 90), "JPEG"), 90),
    "LA png": ("png", lambda: _save(Image.new("LA", (48, 40), (100, 50)), "PNG"), 100),
    "P png": ("png", lambda: _save(synthetic_image(1).convert("P"), "PNG"), None),
    "RGBA png": ("png", lambda: _save(Image.new("RGBA", (48, 40), (10, 20, 30, 0)), "PNG"), 20),
    "RGBA webp": ("webp", lambda: _save(Image.new("RGBA", (48, 40), (10, 20, 30, 99)), "WEBP", lossless=True), 20),
    "CMYK jpeg": ("jpg", lambda: _save(Image.new("CMYK", (48, 40), (0, 0, 0, 0)), "JPEG"), 255),
    "16-bit gray png": ("png", lambda: _save(Image.fromarray(_RAMP16), "PNG"), 127),
    "16-bit gray tiff": ("tiff", lambda: _save(Image.fromarray(_RAMP16), "TIFF"), 127),
    "32-bit int tiff": ("tiff", lambda: _save(Image.fromarray(_RAMP16.astype(np.int32) * 10**4), "TIFF"), 127),
    "float tiff in [0,1]": ("tiff", lambda: _save(Image.fromarray(np.full((40, 48), 0.25, np.float32)), "TIFF"), 64),
    "float tiff in [-5,5]": ("tiff", lambda: _save(Image.fromarray(_SPREAD), "TIFF"), 127),
    "HSV tiff": ("tiff", lambda: _save(Image.new("HSV", (48, 40), (0, 255, 255)).convert("RGB"), "TIFF"), 85),
    "bmp": ("bmp", lambda: _save(Image.new("RGB", (48, 40), (30, 60, 90)), "BMP"), 60),
    "animated gif": ("gif", lambda: _save(_FRAMES[0], "GIF", save_all=True, append_images=_FRAMES[1:]), 85),
    "animated png": ("png", lambda: _save(_FRAMES[0], "PNG", save_all=True, append_images=_FRAMES[1:]), 85),
    "animated webp": ("webp", lambda: _save(_FRAMES[0], "WEBP", save_all=True, append_images=_FRAMES[1:], lossless=True), 85),
    "png under .jpg": ("jpg", lambda: _save(Image.new("RGB", (48, 40), (0, 0, 200)), "PNG"), 67),
    "1x1": ("png", lambda: _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), 9),
}


@pytest.mark.parametrize("case", list(IMAGES), ids=list(IMAGES))
def test_every_mode_and_bit_depth_gives_a_row(case: str, tmp_path: Path, tiny_model) -> None:
    ext, make, mean = IMAGES[case]
    data = make()
    df = _rows(tmp_path, tiny_model, [{"__key__": "img", ext: data, "cls": 1}])
    assert df["error"] == [None]
    if mean is not None:  # scaled, not clipped (a 16-bit image used to come out all white)
        assert abs(np.asarray(decode_image(data)).mean() - mean) <= 3


@pytest.mark.parametrize(
    ("member", "data", "reason"),
    [
        ("tiff", lambda: _save(Image.new("LAB", (48, 40), (50, 0, 0)), "TIFF"), "LAB images are not supported"),
        ("jpg", lambda: b"\xff\xd8\xff\xe0 not a jpeg", "cannot decode image"),
        ("png", lambda: _save(synthetic_image(0), "PNG")[:120], "cannot decode image"),
        ("png", lambda: b"", "cannot decode image"),
        ("png", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "cannot decode image"),  # EPS: not run
    ],
    ids=["LAB", "corrupt", "truncated", "empty", "eps-disguised"],
)
def test_undecodable_images_are_error_rows(member, data, reason, tmp_path: Path, tiny_model) -> None:
    df = _rows(tmp_path, tiny_model, [{"__key__": "bad", member: data(), "cls": 1}])
    assert df["key"] == ["bad"] and reason in df["error"][0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (a few bytes: a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_memory_guard_on_decoding_and_on_resizing(tmp_path: Path, tiny_model) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    thin = _save(Image.new("L", (250_000, 1), 128), "PNG")  # small file; resized to 64 high: 1 G pixels
    samples = [
        {"__key__": "bomb", "png": _png_header(100_000, 100_000), "cls": 1},  # Pillow's own limit
        {"__key__": "big", "png": _png_header(10_000, 6_000), "cls": 1},  # ours: 60 M > 50 M pixels
        {"__key__": "thin", "png": thin, "cls": 1},
        {"__key__": "small", "png": _save(synthetic_image(3), "PNG"), "cls": 1},
    ]
    resizing = load_model(tiny_config("unused.tar", "unused", "model.preprocessing.resize=64").model)
    df = _rows(tmp_path, resizing, samples)
    errors = dict(zip(df["key"], df["error"]))
    assert errors["bomb"].startswith("image too large: ") and "10000000000 pixels" in errors["bomb"]
    assert errors["big"].startswith("image too large: 10000x6000 = 60000000 pixels")
    assert errors["thin"].startswith("image too large after resizing: 250000x1 resized to")
    assert errors["small"] is None
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 500_000  # KiB: < 0.5 GB
    wide = {"__key__": "wide", "png": _save(synthetic_image(3, 64, 48), "PNG"), "cls": 1}
    df = _rows(tmp_path, tiny_model, [wide], "input.max_pixels=2500")  # 64 x 48 > 2500 > 48 x 40
    assert "64x48 = 3072 pixels" in df["error"][0] and "over input.max_pixels=2500" in df["error"][0]


@pytest.mark.parametrize(
    ("members", "mode", "target", "reason"),
    [
        ({}, "label", None, "sample has no label"),
        ({}, "top1", "any", None),
        ({"cls": "2"}, "label", 2, None),
        ({"cls": " 3\n"}, "label", 3, None),
        ({"cls": "abc"}, "label", None, "not an integer class index"),
        ({"cls": "1.5"}, "label", None, "not an integer class index"),
        ({"cls": "-1"}, "label", -1, "label -1 is out of range"),
        ({"cls": "4"}, "label", 4, "label 4 is out of range for a model with 4 classes"),
        ({"cls": str(2**31)}, "label", None, f"label {2**31} is out of range"),
        ({"cls": str(10**30)}, "label", None, "is out of range"),
        ({"cls": "9" * 5000}, "label", None, "not an integer class index"),
        ({"json": {"label": 2.0}}, "label", None, "json field 'label' is not an integer class index"),
        ({"json": {"label": True}}, "label", None, "not an integer class index"),
        ({"json": {"label": [1, 2]}}, "label", None, "not an integer class index"),
        ({"json": {"label": 1}}, "label", 1, None),
        ({"cls": b"\xff\xfe"}, "label", None, "not an integer class index"),
    ],
    ids=["missing", "missing-top1", "int", "whitespace", "text", "float", "negative", "out-of-range",
         "2^31", "1e30", "5000-digits", "json-float", "json-bool", "json-list", "json-int", "non-utf8"],
)
def test_labels_of_every_shape(members, mode, target, reason, tmp_path: Path, tiny_model) -> None:
    sample = {"__key__": "lab", "png": _save(synthetic_image(5), "PNG"), **members}
    df = _rows(tmp_path, tiny_model, [sample], f"targets.mode={mode}")
    row = {name: values[0] for name, values in df.items()}
    assert row["key"] == "lab"
    if reason is None:
        assert row["error"] is None and (target == "any" or row["target"] == target)
    else:
        assert reason in row["error"]
        assert (target is None and row["target"] is None) or row["target"] == target


def test_duplicate_keys_are_error_rows_not_merged(tmp_path: Path, tiny_model) -> None:
    a, b = image_samples(1, 2)
    again = {**b, "__key__": a["__key__"], "cls": 3}
    df = _rows(tmp_path, tiny_model, [a, again, b, {**a, "cls": 2}])  # adjacent, then further on
    assert df["key"] == [a["__key__"], a["__key__"], b["__key__"], a["__key__"]]
    assert df["error"][0] is None and df["error"][2] is None
    assert "duplicate key" in df["error"][1] and "duplicate key" in df["error"][3]


def test_webdataset_key_and_member_name_conventions(tmp_path: Path, tiny_model) -> None:
    png = _save(synthetic_image(2), "PNG")
    samples = [
        {"__key__": "dir/sub/path-like", "png": png, "cls": 1},  # key keeps its folders
        {"__key__": "../../escape", "png": png, "cls": 1},  # only ever a string in a column
        {"__key__": "./dotslash", "png": png, "cls": 1},  # "./" is dropped
        {"__key__": "many.dots", "png": png, "cls": 1},  # key "many", extension "dots.png"
        {"__key__": ".hidden", "png": png, "cls": 1},  # hidden members are skipped
        {"__key__": "bad\udcffname", "png": png, "cls": 1},  # not UTF-8 in the tar
        {"__key__": "na\u00efve k\u00e9y", "png": png, "cls": 1},
        {"__key__": "pickled", "png": png, "cls": 1, "pyd": b"cos\nsystem\n(S'echo pwned'\ntR."},
        {"__key__": "only_pickle", "pickle": b"\x80\x04K\x01."},
        {"__key__": "odd_ext", "\udcfe": b"?"},  # no image, and an extension that is not UTF-8
    ]
    df = _rows(tmp_path, tiny_model, samples)
    errors = dict(zip(df["key"], df["error"]))
    assert list(errors) == ["dir/sub/path-like", "../../escape", "dotslash", "many", "bad\\xffname",
                            "na\u00efve k\u00e9y", "pickled", "only_pickle", "odd_ext"]
    for key in ("dir/sub/path-like", "../../escape", "dotslash", "na\u00efve k\u00e9y", "pickled"):
        assert errors[key] is None, key
    assert "no image member" in errors["many"] and "dots.png" in errors["many"]
    assert "member name is not UTF-8" in errors["bad\\xffname"]
    assert "no image member" in errors["only_pickle"]
    assert "no image member" in errors["odd_ext"] and "\\xfe" in errors["odd_ext"]


def _tar_bytes(tmp_path: Path) -> bytes:
    return Path(write_shard(tmp_path / "src.tar", image_samples(0, 2))).read_bytes()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda tmp: _tar_bytes(tmp)[:1700], "truncated"),  # cut mid-member
        (lambda tmp: b"", "cannot read shard"),  # empty file
        (lambda tmp: b"this is not a tar file at all" * 40, "cannot read shard"),
        (lambda tmp: zlib.compress(b"x" * 100), "cannot read shard"),
        (None, "No such file"),  # missing
        ("dir", "cannot read shard"),  # a folder, not a file
    ],
    ids=["truncated", "empty", "not-a-tar", "garbage-compressed", "missing", "directory"],
)
def test_bad_shards_fail_and_commit_nothing(content, reason, tmp_path: Path, tiny_model) -> None:
    shard = tmp_path / "bad-000000.tar"
    if content == "dir":
        shard.mkdir()
    elif content is not None:
        shard.write_bytes(content(tmp_path))
    cfg = tiny_config(str(shard), str(tmp_path / "out"), "method.name=center")
    with pytest.raises(ShardReadError, match=reason):
        process_shard(str(shard), cfg, tiny_model)
    assert not (tmp_path / "out").exists()


def test_an_empty_tar_is_a_done_shard_with_no_rows(tmp_path: Path, tiny_model) -> None:
    shard = write_shard(tmp_path / "empty-000000.tar", [])
    cfg = tiny_config(shard, str(tmp_path / "out"), "method.name=center")
    assert process_shard(shard, cfg, tiny_model)["rows"] == 0
    assert pq.read_table(part_uri(cfg.output.uri, shard)).num_rows == 0
