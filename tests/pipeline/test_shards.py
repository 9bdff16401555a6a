"""pipeline.shards on real tar shards, locally and on a real S3 endpoint (moto server)."""

from __future__ import annotations

import io
import os
import pickle
import time
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from pipeline.config_load import load_config
from pipeline.shards import (
    Sample,
    ShardReadError,
    decode_image,
    expand_shards,
    iter_samples,
    shard_id,
    split_member_name,
)
from pipeline.storage import Storage
from tests.shard_factory import encode_image, image_samples, member_offsets, synthetic_image, truncate_file, upload, write_shard

# ------------------------------------------------------------------------------------------------
# Expansion
# ------------------------------------------------------------------------------------------------


def test_expand_brace_glob_list_and_listfile(make_shards, tmp_path: Path) -> None:
    paths = make_shards(num_shards=3, per_shard=1)
    d = Path(paths[0]).parent
    assert expand_shards(f"{d}/shard-{{000000..000002}}.tar") == paths
    assert expand_shards(f"{d}/shard-*.tar") == paths
    assert expand_shards(f"{d}/shard-00000[02].tar") == [paths[0], paths[2]]
    assert expand_shards([paths[2], f"{d}/shard-{{000000..000001}}.tar", paths[0]]) == [paths[2], paths[0], paths[1]]
    listfile = tmp_path / "shards.txt"
    listfile.write_text(f"# the shards\n{paths[1]}\n\n{d}/shard-00000[02].tar\n")
    assert expand_shards(f"@{listfile}") == [paths[1], paths[0], paths[2]]


def test_relative_glob_stays_relative(make_shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_shards(num_shards=2, per_shard=1)
    monkeypatch.chdir(tmp_path)
    assert expand_shards("shards/*.tar") == ["shards/shard-000000.tar", "shards/shard-000001.tar"]


def test_expand_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no shards match"):
        expand_shards(f"{tmp_path}/nothing-*.tar")
    with pytest.raises(ValueError, match="no shards"):
        expand_shards([])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="is empty"):
        expand_shards(f"@{empty}")
    with pytest.raises(ValueError, match="cannot read shard list"):
        expand_shards(f"@{tmp_path}/missing.txt")


def test_expand_on_s3(make_shards, s3_bucket: str, s3_options: dict) -> None:
    paths = make_shards(num_shards=3, per_shard=1)
    urls = [upload(p, f"{s3_bucket}/data/{Path(p).name}", s3_options) for p in paths]
    assert expand_shards(f"{s3_bucket}/data/shard-*.tar", Storage(s3_options)) == urls
    assert expand_shards(f"{s3_bucket}/data/shard-{{000001..000002}}.tar", Storage(s3_options)) == urls[1:]
    with fsspec.open(f"{s3_bucket}/lists/all.txt", "w", **s3_options) as f:
        f.write("\n".join(urls[::-1]))
    assert expand_shards(f"@{s3_bucket}/lists/all.txt", Storage(s3_options)) == urls[::-1]
    with pytest.raises(ValueError, match="no shards match"):
        expand_shards(f"{s3_bucket}/other/*.tar", Storage(s3_options))


# ------------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------------


def test_samples_are_grouped_by_key(make_shards) -> None:
    (path,) = make_shards(num_shards=1, per_shard=4, fmt="png")
    samples = list(iter_samples(path))
    assert [s.key for s in samples] == [f"s000_{i:04d}" for i in range(4)]
    for i, s in enumerate(samples):
        assert s.error is None
        assert s.image_bytes[:8] == b"\x89PNG\r\n\x1a\n"
        assert s.label == i % 4 and s.meta == {"label": i % 4, "index": i, "shard": 0}
        assert decode_image(s.image_bytes).size == (48, 40)


def test_member_names_follow_webdataset() -> None:
    assert split_member_name("dir/sub/n0144_10026.JPG") == ("dir/sub/n0144_10026", "jpg")
    assert split_member_name("abc.seg.png") == ("abc", "seg.png")
    assert split_member_name("abc") == ("abc", "")


def test_labels_from_json_and_label_key(tmp_path: Path) -> None:
    img = encode_image(synthetic_image(0))
    path = write_shard(
        tmp_path / "x.tar",
        [
            {"__key__": "a", "jpg": img, "json": {"label": 3}},
            {"__key__": "b", "jpg": img, "cls.txt": " 7\n"},
            {"__key__": "c", "jpg": img, "target": 5, "json": {"target": 6}},
            {"__key__": "d", "jpeg": img},
        ],
    )
    by_key = {s.key: s for s in iter_samples(path)}
    assert by_key["a"].label == 3 and by_key["b"].label == 7
    assert by_key["c"].label is None  # default label_key is cls; json has no cls/label
    assert by_key["d"].label is None and by_key["d"].error is None and by_key["d"].image_bytes[:2] == b"\xff\xd8"
    custom = {s.key: s.label for s in iter_samples(path, label_key="target")}
    assert custom["c"] == 5 and custom["a"] == 3  # member first, then json 'target', then json 'label'


def test_bad_samples_get_an_error_not_an_exception(tmp_path: Path) -> None:
    img = encode_image(synthetic_image(1), "png")
    path = write_shard(
        tmp_path / "bad.tar",
        [
            {"__key__": "no_image", "cls": 1, "json": {"x": 1}},
            {"__key__": "bad_cls", "png": img, "cls": "cat"},
            {"__key__": "bad_json", "png": img, "json": b"{not json"},
            {"__key__": "good", "png": img, "cls": 2},
        ],
    )
    samples = {s.key: s for s in iter_samples(path)}
    assert samples["no_image"].image_bytes is None and "no image member" in samples["no_image"].error
    assert samples["no_image"].label == 1
    assert "not an integer" in samples["bad_cls"].error
    assert "bad json" in samples["bad_json"].error
    assert samples["good"] == Sample(key="good", image_bytes=img, label=2)


class _Evil:
    """Unpickling this creates a file: proof that a pickle was decoded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_members_are_never_decoded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(marker)))
    pickle.loads(payload).close()  # the payload works...
    assert marker.exists()
    marker.unlink()
    img = encode_image(synthetic_image(2))
    path = write_shard(
        tmp_path / "evil.tar",
        [
            {"__key__": f"k{i}", "jpg": img, "cls": i, ext: payload}
            for i, ext in enumerate(("pyd", "pickle", "pth", "pkl", "meta.pyd"))
        ],
    )
    samples = list(iter_samples(path))
    assert [(s.key, s.label) for s in samples] == [(f"k{i}", i) for i in range(5)]
    assert all(s.error is None for s in samples)
    assert not marker.exists()  # ...but reading the shard never unpickled it
    for s in samples:
        assert payload not in (s.image_bytes or b"") and payload not in repr(s.meta).encode()


def test_decode_image_rgb_and_corrupt_bytes() -> None:
    gray = Image.new("L", (10, 6), 128)
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    img = decode_image(buf.getvalue())
    assert img.mode == "RGB" and img.size == (10, 6)
    jpg = encode_image(synthetic_image(3, 64, 64))
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(b"definitely not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(jpg[: len(jpg) // 2])  # truncated: only a full decode notices


def _shard_with_big_members(tmp_path: Path) -> str:
    samples = image_samples(0, 4, "png", size=(96, 96))
    return write_shard(tmp_path / "big.tar", samples)


def test_truncated_tar_yields_good_samples_then_raises(tmp_path: Path) -> None:
    path = _shard_with_big_members(tmp_path)
    offsets = member_offsets(path)
    # Cut in the middle of the third sample's image: two complete samples come out, then the error.
    _, data_start = offsets["s000_0002.png"]
    truncate_file(path, data_start + 100)
    got: list[Sample] = []
    with pytest.raises(ShardReadError, match=r"cannot read shard .*big\.tar after 2 samples"):
        for s in iter_samples(path):
            got.append(s)
    assert [s.key for s in got] == ["s000_0000", "s000_0001"]
    assert all(s.error is None for s in got)


def test_tar_cut_at_a_member_boundary_is_detected(tmp_path: Path) -> None:
    # Without its end-of-archive block a tar cut between members looks complete to tarfile.
    path = _shard_with_big_members(tmp_path)
    header, _ = member_offsets(path)["s000_0003.png"]
    truncate_file(path, header)
    got = []
    with pytest.raises(ShardReadError, match="truncated tar"):
        for s in iter_samples(path):
            got.append(s.key)
    assert got == ["s000_0000", "s000_0001"]  # the last, possibly incomplete, sample is dropped


def test_missing_and_garbage_shards(tmp_path: Path) -> None:
    with pytest.raises(ShardReadError, match="FileNotFoundError"):
        list(iter_samples(str(tmp_path / "missing.tar")))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(ShardReadError):
        list(iter_samples(str(junk)))


def test_gzipped_shard(tmp_path: Path) -> None:
    import gzip

    path = write_shard(tmp_path / "x.tar", image_samples(0, 2))
    gz = tmp_path / "x.tar.gz"
    gz.write_bytes(gzip.compress(Path(path).read_bytes()))
    assert [s.key for s in iter_samples(str(gz))] == ["s000_0000", "s000_0001"]


def test_iter_samples_from_s3(make_shards, s3_bucket: str, s3_options: dict) -> None:
    (path,) = make_shards(num_shards=1, per_shard=3)
    url = upload(path, f"{s3_bucket}/shards/{Path(path).name}", s3_options)
    local = list(iter_samples(path))
    remote = list(iter_samples(url, Storage(s3_options)))
    assert remote == local
    with pytest.raises(ShardReadError, match="missing.tar"):
        list(iter_samples(f"{s3_bucket}/shards/missing.tar", Storage(s3_options)))


def test_unreachable_endpoint_fails_fast_and_clearly() -> None:
    cfg = load_config(
        None,
        ["input.shards=s3://bucket/x.tar", "model.arch=resnet50", "output.uri=s3://bucket/out",
         "storage.endpoint_url=http://127.0.0.1:9", "storage.connect_timeout_s=1", "storage.max_attempts=1"],
    )
    start = time.monotonic()
    with pytest.raises(ShardReadError, match=r"s3://bucket/x\.tar.*127\.0\.0\.1:9"):
        list(iter_samples("s3://bucket/x.tar", Storage.from_config(cfg)))
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------------------------------------
# Safe names
# ------------------------------------------------------------------------------------------------


def test_shard_id() -> None:
    a = shard_id("s3://bucket/imagenet/train-000001.tar")
    b = shard_id("s3://other/imagenet/train-000001.tar")
    assert a.startswith("train-000001-") and b.startswith("train-000001-") and a != b
    assert shard_id("s3://bucket/imagenet/train-000001.tar") == a
    assert shard_id("/data/x.tar.gz").startswith("x-")
    for url in ["../../etc/passwd", "s3://b/", "http://h/shard.tar?sig=a/b"]:
        sid = shard_id(url)
        assert "/" not in sid and ".." not in sid and not sid.startswith(".")
