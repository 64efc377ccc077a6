"""Test helpers for ``edged.http_request``: a real HTTP server on loopback, a resolver for ``*.test``
names, and a guest that makes one request.
"""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.wat import RESP_BUF, RESP_LEN, Wat

__all__ = ["SERVER_HOLD_SECONDS", "FakeDns", "Seen", "m_http", "reach", "serve"]

#: How long the test server holds a /slow request: far past the 300 ms calls that make one.
SERVER_HOLD_SECONDS = 30.0


def reach(*origins: str) -> dict[str, tuple[str, ...]]:
    """The grant for origins on this machine's loopback (the test servers): allowed, and private."""
    return {"allowed_hosts": origins, "private_hosts": origins}


@dataclass
class Seen:
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.requests.append((self.command, self.path, dict(self.headers.items()), body))
        port = self.server.server_address[1]
        if self.path == "/hello":
            self._answer(200, b'{"hello":"world"}')
        elif self.path == "/redirect":
            self._answer(302, b"", {"Location": f"http://127.0.0.2:{port}/hello"})
        elif self.path == "/big":
            self._answer(200, b"x" * 10_000)
        elif self.path == "/echo":
            self._answer(200, json.dumps({"body": body.decode(), "method": self.command}).encode())
        elif self.path == "/slow":
            self.server.seen.release.wait(SERVER_HOLD_SECONDS)
            self._answer(200, b'{"late":true}')
        else:
            self._answer(404, b"{}")

    do_GET = do_POST = _handle  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(http.server.ThreadingHTTPServer):
    seen: Seen

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A guest's request cut off by its limits closes the connection mid-answer: expected, not news.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextmanager
def serve() -> Iterator[tuple[str, Seen]]:
    """A threaded HTTP server on 127.0.0.1 (the paths of ``_Handler``): its origin and what it saw."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = Seen()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.seen
    finally:
        srv.seen.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def m_http(request: str, body: bytes = b"", cap: int = 4096, *, echo: bool = False) -> str:
    """Makes the request; reports {"status", "len"}, or with ``echo`` returns a 200's body as the result."""
    w = Wat()
    body_args = w.ptr_len(body) if body else "(i32.const 0) (i32.const 0)"
    report = f"""{w.json(status='(local.get $status)', len=f'(i32.load (i32.const {RESP_LEN}))')}
    (drop (call $emit))"""
    if echo:
        report = f"""(if (i32.eq (local.get $status) (i32.const 200))
      (then (drop (call $output (i32.const {RESP_BUF}) (i32.load (i32.const {RESP_LEN})) (i32.const 1))))
      (else {report}))"""
    return w.frame_module(f"""
    (local.set $status (call $http {w.ptr_len(request)} {body_args}
                             (i32.const {RESP_BUF}) (i32.const {cap}) (i32.const {RESP_LEN})))
    {report}
    (i32.const 0)""", locals_="(local $status i32)")


class FakeDns:
    """socket.getaddrinfo for ``*.test`` names: each answers the addresses ``answer`` (127.0.0.1 by
    default), in that order; ``hold`` makes the lookup wait for ``go``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold: bool = False,
                 answer: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.answer = answer
        self.asked: list[str] = []
        self.go = threading.Event()
        self.finished = threading.Event()
        self._hold = hold
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not str(host).endswith(".test"):
            return self._real(host, port, *args, **kwargs)
        self.asked.append(str(host))
        if self._hold:
            self.go.wait(30)
        self.finished.set()
        return [info for address in self.answer for info in self._real(address, port, *args, **kwargs)]


