"""Storage: fsspec URLs (local, ``s3://``, ...) and whole-object writes, through one ``Storage``
object built once from the job's ``storage:`` section and passed wherever a URL is opened.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:
    from pipeline.config import JobConfig

_REMOTE_S3 = ("s3", "s3a")


class OutputError(IOError):
    """The output location cannot be read or written."""


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


@dataclass(frozen=True)
class Storage:
    """How this job reaches its URLs: the s3fs keyword arguments of its ``storage:`` section
    (``Storage()``: none, fsspec's defaults and the ``AWS_*`` environment). Holds no credentials
    (botocore reads them from the environment); its options are still never printed (``repr``
    leaves them out). Picklable: it travels to Ray actors and tasks."""

    options: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg: JobConfig) -> Storage:
        """The job's storage: endpoint, region, anonymous access, and bounded timeouts and
        attempts so that an unreachable endpoint fails fast."""
        st = cfg.storage
        opts: dict[str, Any] = {}
        if st.anon:
            opts["anon"] = True
        client_kwargs: dict[str, Any] = {}
        if st.endpoint_url:
            client_kwargs["endpoint_url"] = st.endpoint_url
        if st.region:
            client_kwargs["region_name"] = st.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        opts["config_kwargs"] = {
            "connect_timeout": st.connect_timeout_s,
            "read_timeout": st.read_timeout_s,
            "retries": {"max_attempts": st.max_attempts, "mode": "standard"},
        }
        return cls(opts)

    def options_for(self, url: str) -> dict[str, Any]:
        """The options meant for ``url``: s3fs keyword arguments, which other filesystems (local,
        http) would reject or misuse."""
        return dict(self.options) if self.options and protocol(url) in _REMOTE_S3 else {}

    def url_to_fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """``(filesystem, path)`` for a URL."""
        return fsspec.core.url_to_fs(url, **self.options_for(url))

    def open(self, url: str, mode: str = "rb") -> fsspec.core.OpenFile:
        """``fsspec.open`` with the options that apply to ``url``."""
        return fsspec.open(url, mode, **self.options_for(url))

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write a whole object at once: one PUT remotely, temp file + rename locally."""
        try:
            fs, path = self.url_to_fs(url)
            if is_local(fs):
                _replace_local(path, data)
            else:
                fs.pipe_file(path, data)
        except Exception as exc:
            raise OutputError(f"cannot write {url}: {describe(exc)}") from exc

    def read_json(self, url: str) -> dict[str, Any] | None:
        """The JSON object at ``url``, or None if there is none."""
        try:
            fs, path = self.url_to_fs(url)
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


def _replace_local(path: str, data: bytes) -> None:
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


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()
