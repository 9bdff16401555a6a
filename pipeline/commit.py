"""The output contract (docs/parquet.md): one Parquet part per shard, committed once; done-markers
for resume; a config guard; the manifest.

Layout under ``output_uri`` (any fsspec URL)::

    _lease/<generation>.json which job may write here now (``pipeline.lease``)
    config.json              {"config_hash": ..., "written_by": ...}: which config made these
                             outputs, and the mark that this project owns the folder
    config.yaml              the resolved config, human-readable
    parts/<shard_id>.parquet one per input shard
    _done/<shard_id>.json    written after its part: the shard is finished (stats inside)
    _index/<name>.jsonl      the driver's compacted copies of done-markers (``pipeline.done_index``)
    manifest.json            resolved config, hash, code version, per-shard status

Every object is written whole (``pipeline.storage.write_bytes``: one PUT on S3, temp file +
rename locally), so a part is never seen truncated. The marker is written only after the part, so a marker always
means a complete part, and re-running a shard overwrites the same part name (no duplicate rows).
Under the job's lease every write first checks the lease is still held (a job that lost it
commits nothing), and a part whose marker's config hash is not the job's is refused: one output
folder, one config.

The columns of a part are ``pipeline.schema``'s.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import yaml

from pipeline import done_index
from pipeline.lease import LEASE_DIR, LeaseToken
from pipeline.schema import SCHEMA_VERSION, table_to_parquet_bytes
from pipeline.shards import shard_id
from pipeline.storage import (
    OutputError,
    Storage,
    describe,
    is_local,
    join,
    json_bytes,
    redact_url,
)

PARTS_DIR = "parts"
DONE_DIR = "_done"
CONFIG_JSON = "config.json"
CONFIG_YAML = "config.yaml"
MANIFEST_JSON = "manifest.json"
OWNER = "extremal-saliency output"  # config.json's ``written_by``: this project's folder
SPOT_READS = 1000  # markers read one by one at most, rather than listing them all


class OutputConflictError(OutputError):
    """The output location holds results of a different configuration."""


# ------------------------------------------------------------------------------------------------
# Parts and done-markers
# ------------------------------------------------------------------------------------------------


def part_uri(output_uri: str, shard_url: str) -> str:
    """Where the part of ``shard_url`` goes."""
    return join(output_uri, PARTS_DIR, f"{shard_id(shard_url)}.parquet")


def done_uri(output_uri: str, shard_url: str) -> str:
    """Where the done-marker of ``shard_url`` goes."""
    return join(output_uri, DONE_DIR, f"{shard_id(shard_url)}.json")


def commit_part(
    output_uri: str,
    shard_url: str,
    table: pa.Table,
    stats: Mapping[str, Any] | None = None,
    storage: Storage = Storage(),
    lease: LeaseToken | None = None,
) -> dict[str, Any]:
    """Commit one shard's part, then its done-marker; returns the marker.

    The marker holds ``stats`` (e.g. seconds, attempts, config_hash) plus ``shard``, ``part``,
    ``rows``, ``errors`` (rows with ``error`` set) and ``committed_at``. Re-committing a shard
    replaces its part: a shard never has two copies of its rows. ``lease``: the job's lease;
    the lease is checked before each write, and ``stats["config_hash"]`` must be the lease's
    (what this worker loaded is what the job claimed the folder for).
    """
    if lease is not None:
        got = (stats or {}).get("config_hash")
        if got != lease.config_hash:
            raise OutputConflictError(
                f"not committing {shard_url}: this worker's config hash {str(got)[:12]} is not the job's "
                f"{lease.config_hash[:12]} (did the model checkpoint change while the job ran, or does the "
                "model's factory build unseeded weights?)"
            )
    data = table_to_parquet_bytes(table)
    part = part_uri(output_uri, shard_url)
    errors = 0
    if "error" in table.column_names:
        errors = table.num_rows - table.column("error").null_count
    marker = {
        **dict(stats or {}),
        "shard": redact_url(shard_url),
        "part": f"{PARTS_DIR}/{shard_id(shard_url)}.parquet",
        "rows": table.num_rows,
        "errors": errors,
        "bytes": len(data),
        "committed_at": time.time(),
    }
    if lease is not None:
        lease.check(storage)
    storage.write_bytes(part, data)
    if lease is not None:
        lease.check(storage)
    storage.write_bytes(done_uri(output_uri, shard_url), json_bytes(marker))
    return marker


def load_done(
    output_uri: str, storage: Storage = Storage(), shards: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The finished shards: shard URL (``storage.redact_url``'s form) -> its marker's stats
    (``done_index.KEPT``). Their stats come from the driver's compacted index where it has them,
    and only the markers it lacks are read (a job killed before its index was written); which
    markers exist comes from one listing of ``_done/``, or, when the index covers all of the job's
    ``shards`` but at most ``SPOT_READS`` of them, from reading just those few markers (a finished
    job of 100,000 shards resumes from its index alone: no listing). Unreadable markers are
    ignored (that shard simply runs again)."""
    url = join(output_uri, DONE_DIR)
    fs, path = storage.url_to_fs(url)
    indexed = {m["shard"]: m for m in done_index.read(output_uri, storage)}
    if indexed and shards is not None:
        missing = [s for s in dict.fromkeys(map(redact_url, shards)) if s not in indexed]
        if len(missing) <= SPOT_READS:
            # The index is authoritative for what it holds (markers are deleted only by
            # overwrite, which deletes the index first): only the others are looked at.
            return {**indexed, **_read_markers(fs, [f"{path}/{shard_id(s)}.json" for s in missing], url)}
    try:
        fs.invalidate_cache(path)
        listed = {str(p).rpartition("/")[2]: p for p in fs.ls(path, detail=False) if str(p).endswith(".json")}
    except FileNotFoundError:
        return {}
    except Exception as exc:
        raise OutputError(f"cannot list {url}: {describe(exc)}") from exc
    done: dict[str, dict[str, Any]] = {}
    for shard, marker in indexed.items():
        if listed.pop(f"{shard_id(shard)}.json", None) is not None:  # indexed and still there
            done[shard] = marker
    indexed.clear()
    done.update(_read_markers(fs, list(listed.values()), url))
    return done


def _read_markers(fs: Any, paths: list[str], url: str) -> dict[str, dict[str, Any]]:
    """The markers at ``paths`` that exist and parse."""
    try:
        blobs = fs.cat(paths, on_error="omit") if paths else {}
    except Exception as exc:
        raise OutputError(f"cannot read the markers under {url}: {describe(exc)}") from exc
    done: dict[str, dict[str, Any]] = {}
    for blob in blobs.values():
        marker = done_index.parse(blob)
        if marker is not None:
            done[marker["shard"]] = marker
    return done


def resumable(
    output_uri: str, config_hash: str, storage: Storage = Storage(), shards: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The done-markers a run of ``config_hash`` over ``shards`` may skip (``load_done``). Every
    marker must carry this config hash: a marker of another config means a mixed folder, refused
    with OutputConflictError rather than resumed into."""
    done = load_done(output_uri, storage, shards)
    foreign = {url: m for url, m in done.items() if m.get("config_hash") != config_hash}
    if foreign:
        url, marker = next(iter(sorted(foreign.items())))
        raise OutputConflictError(
            f"{output_uri} holds {len(foreign)} finished shards of another config (e.g. {url}: hash "
            f"{str(marker.get('config_hash'))[:12]}, this job {config_hash[:12]}): use another output.uri, "
            "or output.overwrite=true to delete them"
        )
    return done


# What a run writes, by folder: ``overwrite`` deletes these and nothing else (a file of the user's
# beside them stays).
_OURS = {done_index.INDEX_DIR: (".jsonl",), DONE_DIR: (".json",), PARTS_DIR: (".parquet",)}  # the index first
_OUR_FILES = (MANIFEST_JSON, CONFIG_YAML, CONFIG_JSON)


def _clear(output_uri: str, storage: Storage) -> None:
    """Delete an earlier run's files (never the folders' other files), config.json last."""
    for sub, suffixes in _OURS.items():
        url = join(output_uri, sub)
        try:
            fs, path = storage.url_to_fs(url)
            fs.invalidate_cache(path)
            names = [p for p in fs.ls(path, detail=False) if str(p).endswith(suffixes)]
        except FileNotFoundError:
            continue
        except Exception as exc:
            raise OutputError(f"cannot list {url}: {describe(exc)}") from exc
        try:
            if names:
                fs.rm(names)
            if is_local(fs) and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        except Exception as exc:
            raise OutputError(f"cannot clear {url}: {describe(exc)}") from exc
    for name in _OUR_FILES:
        url = join(output_uri, name)
        try:
            fs, path = storage.url_to_fs(url)
            fs.invalidate_cache(path)
            if fs.exists(path):
                fs.rm(path)
        except Exception as exc:
            raise OutputError(f"cannot clear {url}: {describe(exc)}") from exc


def _entries(output_uri: str, storage: Storage) -> list[str]:
    """The names in the output folder, but the lease's (taken before the folder is checked)."""
    try:
        fs, path = storage.url_to_fs(output_uri)
        fs.invalidate_cache(path)
        names = [str(p).rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise OutputError(f"cannot list {output_uri}: {describe(exc)}") from exc
    return sorted(n for n in names if n and n != LEASE_DIR)


def _owned(output_uri: str, storage: Storage) -> dict[str, Any] | None:
    """config.json of this project's run in the folder (its mark), or None when the folder holds
    none; OutputConflictError for a config.json that is someone else's."""
    url = join(output_uri, CONFIG_JSON)
    try:
        existing = storage.read_json(url)
    except OutputError as exc:
        if "not valid JSON" not in str(exc):
            raise
        existing = {}
    if existing is not None and not (isinstance(existing, dict) and isinstance(existing.get("config_hash"), str)):
        raise OutputConflictError(
            f"{output_uri} holds a {CONFIG_JSON} that is not this project's: use an empty folder or a new output.uri "
            "(nothing there is deleted or replaced, even with output.overwrite=true)"
        )
    return existing


def check_output(
    output_uri: str,
    config_hash: str,
    overwrite: bool = False,
    storage: Storage = Storage(),
) -> None:
    """Claim ``output_uri`` for a config before any part is written. Call it holding the
    output's lease (``pipeline.lease``): the lease is what keeps a second job from claiming or
    clearing the folder at the same time.

    A folder is this project's when its ``config.json`` is (the mark of ownership); a folder
    without one must be empty (but for the lease), else it is refused with or without
    ``overwrite``: a user's files are never deleted or replaced. ``overwrite``: delete the earlier
    run's markers, parts, index, manifest and config files (only those), then claim. Otherwise:
    the same config hash resumes; a different hash raises OutputConflictError.
    """
    url = join(output_uri, CONFIG_JSON)
    existing = _owned(output_uri, storage)
    if existing is None:
        others = _entries(output_uri, storage)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise OutputConflictError(
                f"{output_uri} is not empty ({shown}) and holds no {CONFIG_JSON} of this project's run: use an empty "
                "folder or a new output.uri (nothing there is deleted or replaced, even with output.overwrite=true)"
            )
    elif overwrite:
        _clear(output_uri, storage)
    elif existing.get("config_hash") != config_hash:
        raise OutputConflictError(
            f"{output_uri} holds results of another config (hash {str(existing.get('config_hash'))[:12]}, "
            f"this one {config_hash[:12]}): use another output.uri, or output.overwrite=true to delete them"
        )
    else:
        return
    storage.write_bytes(url, json_bytes({"config_hash": config_hash, "created_at": time.time(), "written_by": OWNER}))


def _redacted_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config with its shard URLs' secrets redacted (signed URLs)."""
    config = dict(config)
    section = config.get("input")
    if isinstance(section, Mapping) and section.get("shards"):
        shards = section["shards"]
        redacted = redact_url(shards) if isinstance(shards, str) else [redact_url(str(u)) for u in shards]
        config["input"] = {**section, "shards": redacted}
    return config


def write_manifest(
    output_uri: str,
    resolved_config: Mapping[str, Any],
    config_hash: str,
    code_version: str,
    shard_stats: Mapping[str, Mapping[str, Any]],
    storage: Storage = Storage(),
    lease: LeaseToken | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` (and the resolved config as ``config.yaml``); returns the manifest.

    ``shard_stats``: shard URL -> {status: done|failed, attempts, rows, errors, seconds, error...};
    a shard without ``status`` counts as done. ``lease``: checked first (a job that lost the
    output writes no manifest). The manifest adds each shard's part path and a
    summary of counts.
    """
    shards: dict[str, dict[str, Any]] = {}
    for url, stats in shard_stats.items():
        entry = {"status": "done", **dict(stats)}
        entry.setdefault("part", f"{PARTS_DIR}/{shard_id(url)}.parquet")
        shards[redact_url(url)] = entry
    resolved_config = _redacted_config(resolved_config)
    statuses = [s["status"] for s in shards.values()]
    manifest = {
        "config_hash": config_hash,
        "code_version": code_version,
        "schema_version": SCHEMA_VERSION,
        "written_at": time.time(),
        "summary": {
            "shards": len(shards),
            "done": statuses.count("done"),
            "failed": statuses.count("failed"),
            "rows": sum(int(s.get("rows") or 0) for s in shards.values()),
            "errors": sum(int(s.get("errors") or 0) for s in shards.values()),
        },
        "config": dict(resolved_config),
        "shards": shards,
    }
    if lease is not None:
        lease.check(storage)
    storage.write_bytes(join(output_uri, CONFIG_YAML), yaml.safe_dump(dict(resolved_config), sort_keys=False).encode())
    # Indented for a person while small; compact past that (json's C encoder: ~10x faster at 100k shards).
    data = json_bytes(manifest) if len(shards) <= 1000 else json.dumps(manifest, sort_keys=True, default=str).encode()
    storage.write_bytes(join(output_uri, MANIFEST_JSON), data)
    return manifest


def current_code_version() -> str:
    """The git commit of this checkout (``-dirty`` with local changes), else the package version."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout holding pipeline/
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return f"git:{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"extremal-saliency {importlib.metadata.version('extremal-saliency')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
