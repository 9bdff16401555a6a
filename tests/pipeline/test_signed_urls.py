"""Signed URLs: their query strings are credentials. A real HTTP server on 127.0.0.1 that serves
shards only with a valid signature; the job on the session's Ray cluster must never write the
signature to Parquet, done-markers, the manifest, config files or its output, and a shard signed
again later is the same shard (resume, no second part)."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.driver import run_job
from pipeline.io.parts import read_results
from pipeline.storage import redact_url, scrub
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import image_samples, write_shard

SIGNATURES = {"SeCrEt-OnE-1234", "SeCrEt-TwO-5678"}


class _SignedHandler(BaseHTTPRequestHandler):
    root: Path

    def _file(self) -> bytes | None:
        parts = urlsplit(self.path)
        if parse_qs(parts.query).get("X-Amz-Signature", [""])[0] not in SIGNATURES:
            self.send_error(403, "bad signature")
            return None
        path = self.root / parts.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return None
        return path.read_bytes()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        data = self._file()
        if data is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        data = self._file()
        if data is None:
            return
        start, end = 0, len(data) - 1
        ranged = self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            lo, _, hi = self.headers["Range"][6:].partition("-")
            start, end = int(lo or 0), min(int(hi) if hi else end, end)
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start : end + 1])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def signed_server(tmp_path: Path) -> Iterator[str]:
    handler = type("Handler", (_SignedHandler,), {"root": tmp_path / "www"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_redact_url_and_scrub() -> None:
    url = "https://h.example/b/s-000001.tar?X-Amz-Credential=AKIA1%2F2&X-Amz-Signature=abc123#frag"
    assert redact_url(url) == "https://h.example/b/s-000001.tar?REDACTED"
    assert redact_url("s3://bucket/a.tar") == "s3://bucket/a.tar" and redact_url("/d/a.tar") == "/d/a.tar"
    assert redact_url("https://user:pw@h/x.tar") == "https://REDACTED@h/x.tar"
    text = scrub(f"403 for {url}; also X-Amz-Signature=abc123 alone", url)
    assert "abc123" not in text and "AKIA" not in text and "s-000001.tar?REDACTED" in text


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.mark.usefixtures("ray_cluster")
def test_signatures_never_reach_outputs_or_logs(tmp_path: Path, signed_server: str) -> None:
    write_shard(tmp_path / "www" / "good-000000.tar", image_samples(0, 2))
    write_shard(tmp_path / "www" / "other-000000.tar", image_samples(1, 1))
    good = f"{signed_server}/good-000000.tar?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=SeCrEt-OnE-1234"
    forbidden = f"{signed_server}/other-000000.tar?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=WrOnG-9999"
    out = tmp_path / "out"
    overrides = ("cluster.num_actors=1", "cluster.max_retries=0")
    stream = io.StringIO()
    summary = run_job(tiny_config([good, forbidden], str(out), *overrides), progress_stream=stream, tty=False)

    assert [s.url for s in summary.done] == [good] and [s.url for s in summary.failed] == [forbidden]
    reason = summary.failures()[redact_url(forbidden)]
    assert "cannot read shard" in reason and "other-000000.tar?REDACTED" in reason
    written = _all_bytes(out) + stream.getvalue().encode() + summary.report().encode()
    for secret in (b"SeCrEt", b"WrOnG", b"AKIAEXAMPLE"):
        assert secret not in written
    assert read_results(str(out)).column("shard").to_pylist() == [redact_url(good)] * 2

    # Signed again (a new signature): the same shard, resumed, no second part.
    resigned = good.replace("SeCrEt-OnE-1234", "SeCrEt-TwO-5678")
    again = run_job(tiny_config([resigned], str(out), *overrides), progress_stream=io.StringIO(), tty=False)
    assert again.ok and all(s.resumed for s in again.done)
    assert len(os.listdir(out / "parts")) == 1 and read_results(str(out)).num_rows == 2
    assert b"SeCrEt-TwO" not in _all_bytes(out)
