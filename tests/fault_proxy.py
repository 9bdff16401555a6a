"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 endpoint (the moto server): a
fraction of requests fail, either before reaching the server (503 SlowDown) or after the server
did the work (500 InternalError: the client cannot tell whether it happened). Import as
``from tests.fault_proxy import FaultProxy``."""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ERROR = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>injected fault</Message></Error>"
_HOP = {"connection", "transfer-encoding", "keep-alive"}


class FaultProxy:
    """``FaultProxy(upstream, rate)``; ``start()`` returns its endpoint URL; ``counts`` tallies
    requests and injected faults by kind; ``stop()``."""

    def __init__(self, upstream: str, rate: float, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def _fault(self) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(("before", "after"))
            self.counts[kind] += 1
            return kind

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                # A HEAD reply's Content-Length is the object's size, not this (empty) body's.
                keep_length = self.command == "HEAD"
                for k, v in headers:
                    if k.lower() not in _HOP and (keep_length or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not keep_length or not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str) -> None:
                self._reply(status, [("Content-Type", "application/xml")], _ERROR.format(code=code).encode())

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._fault()
                if fault == "before":
                    return self._error(503, "SlowDown")
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if fault == "after":
                    return self._error(500, "InternalError")
                self._reply(resp.status, resp.getheaders(), data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
