"""Packing ``SourceSample``s into WebDataset shards: ``<out>/<prefix>-000000.tar``, ...

Each shard holds ``shard_size`` consecutive samples (the last one fewer); per sample, adjacent:
``<key>.<jpg|png|webp>``, ``<key>.cls`` (the first label, when there is one) and ``<key>.json``
(the annotations, ``pipeline.datasets.entry``), which ``pipeline.shards.iter_samples`` reads.

Resumable: a shard is built in memory and written whole (``pipeline.storage.write_bytes``: temp
file + rename locally, one PUT remotely), so a shard that exists is complete and is not written
again; an interrupted run leaves at most a temp file, and the next run writes that shard anew.
``<out>/make_shards.json`` records what the shards were made from; a run with other settings
(source, layout, shard size, sample count) is refused, since its shards would not line up.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from pipeline.datasets.entry import SourceSample
from pipeline.storage import Storage, join, json_bytes

PARAMS_JSON = "make_shards.json"


class ShardSettingsError(ValueError):
    """The output holds shards made from another source or with another shard size."""


@dataclass
class ShardWriteReport:
    """What ``write_dataset_shards`` did: every shard URL, which were written now and which were
    already there, and the sample count."""

    shards: list[str]
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    samples: int = 0

    def pattern(self) -> str:
        """A brace pattern over every shard (``input.shards`` of a job)."""
        if len(self.shards) == 1:
            return self.shards[0]
        first, last = self.shards[0], self.shards[-1]
        head, a = first[:-len("000000.tar")], first[-len("000000.tar"):-len(".tar")]
        return f"{head}{{{a}..{last[-len('000000.tar'):-len('.tar')]}}}.tar"


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # same bytes for the same inputs
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(loaded: Sequence[tuple[str, tuple[bytes, str, dict[str, Any]]]]) -> bytes:
    """A tar of (key, (image bytes, extension, meta)) samples, members of a sample adjacent."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:  # GNU: keys of any length
        for key, (image, ext, meta) in loaded:
            _member(tar, f"{key}.{ext}", image)
            if meta.get("label") is not None:
                _member(tar, f"{key}.cls", str(int(meta["label"])).encode())
            _member(tar, f"{key}.json", json.dumps(meta, separators=(",", ":")).encode())
    return buf.getvalue()


def _load(sample: SourceSample) -> tuple[str, tuple[bytes, str, dict[str, Any]]]:
    try:
        return sample.key, sample.load()
    except Exception as exc:  # name the sample: the reader's error alone does not say which
        raise ValueError(f"sample {sample.key!r}: {type(exc).__name__}: {exc}") from exc


def _exists(url: str, storage: Storage) -> bool:
    fs, path = storage.url_to_fs(url)
    fs.invalidate_cache(path)
    return fs.exists(path)


def write_dataset_shards(
    samples: Sequence[SourceSample],
    out: str,
    *,
    shard_size: int = 1000,
    prefix: str = "shard",
    source: dict[str, Any] | None = None,
    storage: Storage = Storage(),
    workers: int = 8,
    progress: bool = True,
) -> ShardWriteReport:
    """Write (or finish writing) the shards of ``samples`` under ``out`` (any fsspec URL).

    ``source``: what the samples come from (layout, path, split...), recorded with the shard size
    in ``make_shards.json``; a different record there is a ShardSettingsError. ``workers``: threads that
    load a shard's samples (remote reads overlap). A sample that cannot be loaded is an error for
    the whole run (a dataset with a missing image is broken, not partially usable): the shards
    written before it stay, and a re-run resumes after them.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    if not samples:
        raise ValueError("no samples to write")
    params = {"source": source or {}, "shard_size": shard_size, "prefix": prefix, "samples": len(samples),
              "first_key": samples[0].key, "last_key": samples[-1].key}
    params_url = join(out, PARAMS_JSON)
    previous = storage.read_json(params_url)
    if previous is not None and previous != json.loads(json_bytes(params)):
        raise ShardSettingsError(f"{out} holds shards made with other settings ({params_url}); use another --out")
    if previous is None:
        storage.write_bytes(params_url, json_bytes(params))

    n = (len(samples) + shard_size - 1) // shard_size
    report = ShardWriteReport(shards=[join(out, f"{prefix}-{i:06d}.tar") for i in range(n)], samples=len(samples))
    todo: list[tuple[int, str]] = []
    for i, url in enumerate(report.shards):
        if _exists(url, storage):
            report.skipped.append(url)
        else:
            todo.append((i, url))
    done = len(samples) - sum(len(samples[i * shard_size : (i + 1) * shard_size]) for i, _ in todo)
    bar = tqdm(total=len(samples), initial=done, unit="img", desc="make_shards", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, url in todo:
            loaded = []
            for item in pool.map(_load, samples[i * shard_size : (i + 1) * shard_size]):
                loaded.append(item)
                bar.update(1)
            storage.write_bytes(url, shard_bytes(loaded))
            report.written.append(url)
    bar.close()
    return report
