"""Reading WebDataset shards from any fsspec URL (local, ``s3://``, ...).

A shard is a tar whose members are grouped into samples by key: the member path up to the first
dot of its basename (``dir/n01440764_10026.jpg`` -> key ``dir/n01440764_10026``, extension
``jpg``); a sample's members are adjacent. We stream the tar with the standard library, so nothing
is ever extracted to disk and nothing is unpickled: ``.pyd``/``.pickle``/``.pth``/``.pkl`` members
are skipped unread (a shard is untrusted input).

Names: a member whose basename starts with a dot is skipped (hidden files, macOS ``._x``); a key
may hold dots after its first character and ``/`` (path-like names are just keys: nothing is ever
written under a key's name). A member name that is not UTF-8 gives its sample an error row whose
key shows the bytes escaped (``bad\\xff``); the shard's other samples are unaffected. A key seen
twice in a shard (two adjacent samples with the same key, detected by a repeated member, or the
same key further on) gives the repeat an error row instead of merging the two samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from braceexpand import braceexpand

from pipeline.images import decode_image as decode_image  # re-exported: decoding lives there
from pipeline.storage import Storage, protocol, redact_url, scrub

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
# Members that would need unpickling (arbitrary code execution): never read.
PICKLE_EXTENSIONS = ("pyd", "pickle", "pth", "pkl")
_GLOB_CHARS = re.compile(r"[*?\[]")


class ShardReadError(IOError):
    """A shard could not be opened or read to its end (missing, unreachable, truncated, corrupt).
    ``permanent``: retrying cannot help (the shard does not exist, or is a folder)."""

    permanent: bool = False


@dataclass
class Sample:
    """One WebDataset sample.

    ``image_bytes`` is the encoded image (undecoded: decoding is the worker's job, so a bad image
    fails one row, not the shard). ``label`` is the class index if the sample carries one;
    ``labels`` every class present (the json's ``labels`` list, multi-label data such as VOC and
    COCO written by ``jobs.make_shards``), None when the json has no such list.
    ``error`` is set, instead of raising, when the sample itself is unusable.
    """

    key: str
    image_bytes: bytes | None = None
    label: int | None = None
    labels: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ------------------------------------------------------------------------------------------------
# URL lists
# ------------------------------------------------------------------------------------------------


def _glob(pattern: str, storage: Storage) -> list[str]:
    fs, path = storage.url_to_fs(pattern)
    matches = sorted(fs.glob(path))
    if "://" in pattern:
        return [fs.unstrip_protocol(m) for m in matches]
    if not os.path.isabs(os.path.expanduser(pattern)):
        return [os.path.relpath(m) for m in matches]  # keep relative patterns relative
    return matches


def _read_list_file(url: str, storage: Storage) -> list[str]:
    try:
        with storage.open(url, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read shard list @{url}: {exc}") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def canonical_url(url: str) -> str:
    """One spelling per local shard, so that a shard listed in two spellings runs once and has one
    identity (its rows' ``shard``, its part's name): ``file://`` dropped, and the path's ``//``,
    ``/./`` and ``dir/..`` collapsed (``a//b.tar``, ``a/./b.tar``, ``a/x/../b.tar``,
    ``file://a/b.tar`` -> ``a/b.tar``); a relative path stays relative. Remote URLs are kept as
    they are: an object store's key is literal (``s3://b/a//x.tar`` and ``s3://b/a/x.tar`` are two
    objects)."""
    if protocol(url) != "file":
        return url
    path = url.split("://", 1)[1] if "://" in url else url
    return posixpath.normpath(path) if path else url


def expand_shards(spec: str | Sequence[str], storage: Storage = Storage()) -> list[str]:
    """Shard URLs from a brace pattern, a glob (local or remote), ``@list.txt`` (one URL, brace
    pattern or glob per line; ``#`` comments), or a list of these. Order is kept (glob matches
    sorted), local paths canonicalised (``canonical_url``), duplicates dropped. Brace-expanded
    URLs are not checked for existence (a missing shard fails when read); a glob that matches
    nothing, or an empty result, is a ValueError.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in items:
        item = str(item).strip()
        if item.startswith("@"):
            lines = _read_list_file(item[1:], storage)
            if not lines:
                raise ValueError(f"shard list {item} is empty")
            urls.extend(expand_shards(lines, storage))
            continue
        for url in braceexpand(item):
            # http(s) URLs are taken literally: '?' starts a query string (signed URLs), not a glob.
            if protocol(url) not in ("http", "https") and _GLOB_CHARS.search(url.split("://", 1)[-1]):
                matches = _glob(url, storage)
                if not matches:
                    raise ValueError(f"no shards match {url!r}")
                urls.extend(matches)
            else:
                urls.append(url)
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    return list(dict.fromkeys(canonical_url(u) for u in urls))


# ------------------------------------------------------------------------------------------------
# Streaming samples
# ------------------------------------------------------------------------------------------------


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``): the WebDataset key and extension."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower()


def _escaped_if_not_utf8(text: str) -> str | None:
    """tarfile decodes names with ``surrogateescape``: a name that was not UTF-8 holds lone
    surrogates, which Arrow cannot store. Returns it with the bad bytes escaped, or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parse_label(text: bytes | str, what: str) -> int:
    try:
        return int(str(text.decode() if isinstance(text, bytes) else text).strip())
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what} is not an integer class index: {text[:40]!r}") from None


def _make_sample(
    key: str, members: dict[str, bytes], label_key: str | None, problems: list[str] | None = None, present: set[str] | None = None
) -> Sample:
    """One sample from its members (extension -> bytes); ``problems`` found while grouping
    (a non-UTF-8 name, a duplicate key) become its error with whatever else is wrong.
    ``present``: every member extension of the sample, read or not (for the error message).
    ``label_key`` None: labels are not read (a job explaining the model's predictions)."""
    sample = Sample(key=key)
    problems = list(problems or [])
    for ext in IMAGE_EXTENSIONS:
        if ext in members:
            sample.image_bytes = members[ext]
            break
    else:
        have = ", ".join(sorted(present if present is not None else members)) or "nothing"
        problems.append(f"no image member ({'/'.join(IMAGE_EXTENSIONS)}); has {have}")
    if "json" in members:
        try:
            meta = json.loads(members["json"])
            if not isinstance(meta, dict):
                raise ValueError("not an object")
            sample.meta = meta
        except ValueError as exc:
            problems.append(f"bad json member: {exc}")
    if label_key is None:
        return _with_problems(sample, problems)
    try:
        for ext in (label_key, f"{label_key}.txt"):
            if ext in members:
                sample.label = _parse_label(members[ext], f"member .{ext}")
                break
        else:
            for name in dict.fromkeys((label_key, "label")):
                value = sample.meta.get(name)
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, (int, str)):
                        raise ValueError(f"json field {name!r} is not an integer class index: {value!r}")
                    sample.label = _parse_label(str(value), f"json field {name!r}")
                    break
        labels = sample.meta.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
                raise ValueError(f"json field 'labels' is not a list of class indices: {str(labels)[:40]}")
            sample.labels = list(dict.fromkeys(labels))  # a class present twice is one target
    except ValueError as exc:
        problems.append(str(exc))
    return _with_problems(sample, problems)


def _with_problems(sample: Sample, problems: list[str]) -> Sample:
    if problems:
        sample.error = "; ".join(problems)
    return sample


def iter_samples(
    url: str, storage: Storage = Storage(), label_key: str | None = "cls"
) -> Iterator[Sample]:
    """Stream the samples of one shard, in tar order.

    Reads only the members a sample needs (image, label, json); pickle members are skipped
    without being read. If the tar cannot be opened, or is truncated/corrupt part-way, the complete
    samples before the damage are yielded and then ShardReadError is raised (the last, possibly
    incomplete, sample is dropped).
    """
    labels = () if label_key is None else (label_key, f"{label_key}.txt", "label")
    wanted = {*IMAGE_EXTENSIONS, "json", *labels}
    count = 0
    ended = {"clean": False}

    class _EndTrackingTarInfo(tarfile.TarInfo):
        # In stream mode tarfile treats a missing header (a tar cut at a member boundary) as the
        # end of the archive; only a zero block is a real end. Record which one we saw.
        @classmethod
        def frombuf(cls, buf, encoding, errors):  # type: ignore[override]
            try:
                return super().frombuf(buf, encoding, errors)
            except tarfile.EOFHeaderError:
                ended["clean"] = True
                raise

    try:
        with storage.open(url, "rb") as raw:
            # 'r|*': forward-only stream (no seeks, fine for S3), transparent gzip.
            with tarfile.open(fileobj=raw, mode="r|*", tarinfo=_EndTrackingTarInfo) as tar:
                key: str | None = None
                members: dict[str, bytes] = {}
                seen_exts: set[str] = set()  # every member extension of the current sample
                seen_keys: set[str] = set()  # every key of the shard so far
                problems: list[str] = []
                for info in tar:
                    if not info.isfile():
                        continue
                    name = info.name[2:] if info.name.startswith("./") else info.name
                    base = name.rpartition("/")[2]
                    if base.startswith("."):  # hidden files, macOS '._x' metadata
                        continue
                    member_key, ext = split_member_name(name)
                    bad_name = _escaped_if_not_utf8(member_key)
                    if bad_name is not None:
                        member_key = bad_name
                    ext = _escaped_if_not_utf8(ext) or ext  # only ever shown in a reason
                    # A repeated extension means a new sample with the same key: never merge them.
                    if member_key != key or ext in seen_exts:
                        if key is not None:
                            count += 1
                            yield _make_sample(key, members, label_key, problems, seen_exts)
                        key, members, seen_exts, problems = member_key, {}, set(), []
                        if key in seen_keys:
                            problems.append(f"duplicate key {key!r}: an earlier sample of this shard has it")
                        if bad_name is not None:
                            problems.append(f"member name is not UTF-8: {bad_name!r} (bytes shown escaped)")
                        seen_keys.add(key)
                    seen_exts.add(ext)
                    if ext in PICKLE_EXTENSIONS or ext.rpartition(".")[2] in PICKLE_EXTENSIONS:
                        continue
                    if ext in wanted:
                        f = tar.extractfile(info)
                        members[ext] = f.read() if f is not None else b""
                if not ended["clean"]:
                    raise tarfile.ReadError("truncated tar: no end-of-archive block")
                if key is not None:
                    count += 1
                    yield _make_sample(key, members, label_key, problems, seen_exts)
    except ShardReadError:
        raise
    except Exception as exc:  # tarfile/zlib/OS/botocore errors alike: one clear failure
        detail = scrub(" ".join(str(exc).split()) or type(exc).__name__, url)
        error = ShardReadError(
            f"cannot read shard {redact_url(url)} after {count} samples: {type(exc).__name__}: {detail}"
        )
        # Set on the instance: it travels with the exception through Ray (pickled __dict__).
        error.permanent = count == 0 and isinstance(exc, (FileNotFoundError, IsADirectoryError))
        raise error from None  # the cause's text may hold a signed URL's query string


# ------------------------------------------------------------------------------------------------
# Safe names
# ------------------------------------------------------------------------------------------------


def _short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def _safe_stem(text: str, max_len: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
    safe = re.sub(r"\.{2,}", "_", safe).strip("._-")
    return safe[:max_len]


def shard_id(url: str) -> str:
    """A readable, unique, file-name-safe id for a shard URL: the file name without ``.tar``
    (``.tar.gz``, ``.tgz``) plus a hash of the full URL (``demo-000001-3fa2b1c9d0``), so shards
    with the same name in different folders or buckets do not collide. A signed URL's query
    string is not part of it (``storage.redact_url``)."""
    url = redact_url(url)
    base = url.rstrip("/").rpartition("/")[2].split("?", 1)[0]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    stem = _safe_stem(base, 80)
    return f"{stem}-{_short_hash(url)}" if stem else _short_hash(url)
