"""The done index: the driver's compacted copies of its output's done-markers, so that resuming a
job of 100,000 shards on object storage is one listing of ``_done/`` plus a few reads, not one
GET per marker.

Layout: ``<output>/_index/<name>.jsonl``, one marker per line (the fields in ``KEPT``). The
driver appends a segment every ``SEGMENT_SHARDS`` commits (and at the end), and at the end of a
run writes one segment holding every finished shard, then deletes the segments it replaces.
Markers are deleted only by ``overwrite``, which deletes the index first, so an index line stands
for its marker: a job whose shards are all indexed but a few resumes from the index and those few
markers (``commit.load_done``), without listing ``_done/``; otherwise ``_done/`` is listed once
and a marker missing from the index (a driver killed before writing its segment) is read itself.
Segments are written whole, under the job's lease, like every other object of the output.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pipeline.lease import LeaseToken
from pipeline.storage import OutputError, Storage, describe, join

INDEX_DIR = "_index"
SEGMENT_SHARDS = 1000  # commits per segment: one small write per this many shards
# The marker fields resume needs (the summary's and the manifest's per-shard stats).
KEPT = ("shard", "part", "config_hash", "attempts", "rows", "errors", "images", "seconds")


def parse(blob: bytes | str) -> dict[str, Any] | None:
    """A marker's kept fields, or None when it is unreadable."""
    try:
        marker = json.loads(blob)
        if not isinstance(marker, dict) or not isinstance(marker.get("shard"), str):
            return None
    except ValueError:
        return None
    return {k: marker[k] for k in KEPT if k in marker}


def _segments(output_uri: str, storage: Storage) -> tuple[Any, list[str]]:
    url = join(output_uri, INDEX_DIR)
    try:
        fs, path = storage.url_to_fs(url)
        fs.invalidate_cache(path)
        return fs, sorted(str(p) for p in fs.ls(path, detail=False) if str(p).endswith(".jsonl"))
    except FileNotFoundError:
        return None, []
    except Exception as exc:
        raise OutputError(f"cannot list {url}: {describe(exc)}") from exc


def read(output_uri: str, storage: Storage = Storage()) -> Iterator[dict[str, Any]]:
    """Every indexed marker (kept fields), segment by segment; unreadable lines are skipped."""
    fs, names = _segments(output_uri, storage)
    for name in names:
        try:
            blob = fs.cat_file(name)
        except FileNotFoundError:
            continue  # compacted away by a run that ended meanwhile: its markers are read instead
        except Exception as exc:
            raise OutputError(f"cannot read {name}: {describe(exc)}") from exc
        lines = [line for line in blob.splitlines() if line.strip()]
        try:  # one parse of the whole segment (the driver's lines are whole)...
            whole = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:  # ...else line by line, skipping what does not parse
            whole = [parse(line) for line in lines]
        for marker in whole:
            if isinstance(marker, dict) and isinstance(marker.get("shard"), str):
                yield {k: marker[k] for k in KEPT if k in marker}


class IndexWriter:
    """The driver's side: ``add`` each committed marker; a segment is written every
    ``SEGMENT_SHARDS`` of them; ``compact`` at the end of the run."""

    def __init__(self, output_uri: str, storage: Storage, lease: LeaseToken | None) -> None:
        self.output_uri, self.storage, self.lease = output_uri, storage, lease
        self.run = uuid.uuid4().hex[:8]
        self.seq = 0
        self.pending: list[dict[str, Any]] = []

    def _write(self, markers: Iterable[Mapping[str, Any]]) -> str:
        self.seq += 1
        lines = [json.dumps({k: m[k] for k in KEPT if k in m}, separators=(",", ":")) + "\n" for m in markers]
        # The name says how many markers it holds: a resume that changed nothing sees it is whole.
        name = f"{time.time_ns():020d}-{self.run}-{self.seq:06d}-n{len(lines)}.jsonl"
        data = "".join(lines)
        if self.lease is not None:
            self.lease.check(self.storage)
        self.storage.write_bytes(join(self.output_uri, INDEX_DIR, name), data.encode())
        return name

    def add(self, marker: Mapping[str, Any]) -> None:
        self.pending.append({k: marker[k] for k in KEPT if k in marker})
        if len(self.pending) >= SEGMENT_SHARDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self._write(self.pending)
            self.pending = []

    def compact(self, markers: Iterable[Mapping[str, Any]], count: int | None = None) -> None:
        """One segment with ``markers`` (every finished shard of the job: ``count`` of them), then
        the older segments deleted: the next resume reads one file. Nothing is written when this
        run committed nothing and the index already is one segment of ``count`` markers."""
        _, before = _segments(self.output_uri, self.storage)
        whole = count is not None and len(before) == 1 and before[0].endswith(f"-n{count}.jsonl")
        if self.seq == 0 and not self.pending and whole:
            return
        self.pending = []
        keep = self._write(markers)
        old = [n for n in before if not n.endswith(keep)]
        if old:
            fs, _ = self.storage.url_to_fs(join(self.output_uri, INDEX_DIR))
            try:
                fs.rm(old)
            except Exception as exc:
                raise OutputError(f"cannot delete old index segments: {describe(exc)}") from exc
