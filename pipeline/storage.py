"""Storage: fsspec URLs (local, ``s3://``, ...) and whole-object writes.

The job's storage options are s3fs keyword arguments, so they are passed only to ``s3://`` URLs.
An object is written with one call, never streamed: on S3 an exception inside
``with fs.open(path, "wb")`` still commits a truncated object, so a part is serialised in memory
and uploaded with one PUT; locally it is written to a temp file and renamed. Readers therefore
see a whole object or none, and never a temporary one (local temp files are hidden names).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec

_REMOTE_S3 = ("s3", "s3a")


class OutputError(IOError):
    """The output location cannot be read or written."""


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _options_for(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The storage options meant for ``url``: the job's options are s3fs keyword arguments, which
    other filesystems (local, http) would reject or misuse."""
    if not storage_options:
        return {}
    return dict(storage_options) if protocol(url) in _REMOTE_S3 else {}


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path)`` for a URL, passing ``storage_options`` only where they apply."""
    return fsspec.core.url_to_fs(url, **_options_for(url, storage_options))


def open_url(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None):
    """``fsspec.open`` with the storage options that apply to ``url``."""
    return fsspec.open(url, mode, **_options_for(url, storage_options))


def redact_url(url: str) -> str:
    """``url`` safe to write anywhere (Parquet, manifest, logs): an http(s) query string (a signed
    URL's is a credential) becomes ``?REDACTED``, a ``user:password@`` becomes ``REDACTED@``.
    Other URLs are returned unchanged. Also the shard's identity (``shards.shard_id``): a shard
    signed again later is the same shard."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rpartition("@")[2]
    path = f"{slash}{path}"
    if scheme.lower() in ("http", "https"):
        path, query, _ = path.partition("?")
        path = path.partition("#")[0] + ("?REDACTED" if query else "")
    return f"{scheme}://{netloc}{path}"


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. an exception message) with ``url``'s secrets redacted as ``redact_url``
    does, wherever the URL or its query string appears."""
    safe = redact_url(url)
    if safe == url:
        return text
    text = text.replace(url, safe)
    query = url.partition("?")[2].partition("#")[0]
    for secret in filter(None, (query, *query.split("&"))):
        text = text.replace(secret, "REDACTED")
    return text


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None) -> None:
    """Write a whole object at once: one PUT remotely, temp file + rename locally."""
    try:
        fs, path = url_to_fs(url, storage_options)
        if is_local(fs):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # A hidden name in the same folder: readers of the folder (pyarrow, pandas, DuckDB's
            # *.parquet) never list it, and the rename stays on one filesystem.
            head, _, name = path.rpartition("/")
            tmp = f"{head}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if head else f".{name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            fs.pipe_file(path, data)
    except Exception as exc:
        raise OutputError(f"cannot write {url}: {describe(exc)}") from exc


def read_json(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON object at ``url``, or None if there is none."""
    try:
        fs, path = url_to_fs(url, storage_options)
        fs.invalidate_cache(path)  # other processes write here; never trust a cached listing
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise OutputError(f"cannot read {url}: {describe(exc)}") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise OutputError(f"{url} is not valid JSON: {exc}") from exc


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()
