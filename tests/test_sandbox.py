"""What a function can reach: filesystem preopens, environment, log grant and the HTTP allowlist."""

from __future__ import annotations

import http.client
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.errors import FunctionTimeout
from edged.settings import FunctionSettings, PoolSettings, Preopen
from edged.wasm.host import connect as host_connect
from edged.wasm.pool import FunctionPool
from tests.outbound import FakeDns, Seen, m_http, reach, serve
from tests.pools import call_sync
from tests.wat import OUT_FD, Wat, raw_frame, write_wasm

pytestmark = pytest.mark.timeout(120)

FRAME = raw_frame(b"{}")
#: A call bounded by its 300 ms timeout ends well within this, even on a loaded machine.
CALL_BOUND_SECONDS = 5.0
O_CREAT, O_TRUNC = 1, 8
RIGHT_READ, RIGHT_WRITE = 1 << 1, 1 << 6


def call(tmp_path: Path, wat: str, **settings: Any) -> Any:
    path = write_wasm(tmp_path, "fn", wat)
    functions = {"fn": FunctionSettings(module=path, **settings)}
    with FunctionPool(functions, PoolSettings(workers=1, queue=1), tmp_path / "cache") as pool:
        return call_sync(pool, "fn", FRAME).json


# -- filesystem --------------------------------------------------------------------------------------

def m_open(path: str, *, fd: int = 3, write: bool = False) -> str:
    """path_open(fd, path) for reading, or create+truncate for writing 'hello'; reports both errnos."""
    w = Wat()
    oflags = O_CREAT | O_TRUNC if write else 0
    rights = RIGHT_WRITE if write else RIGHT_READ
    write_code = f"""(if (i32.eqz (local.get $open))
        (then (local.set $write (call $write_fd (i32.load (i32.const {OUT_FD})) {w.ptr_len('hello')}))))"""
    return w.frame_module(f"""
    (local.set $write (i32.const -1))
    (local.set $open (call $path_open (i32.const {fd}) (i32.const 0) {w.ptr_len(path)} (i32.const {oflags})
                                      (i64.const {rights}) (i64.const 0) (i32.const 0) (i32.const {OUT_FD})))
    {write_code if write else ""}
    {w.json(open='(local.get $open)', write='(local.get $write)')}
    (drop (call $emit)) (i32.const 0)""", locals_="(local $open i32) (local $write i32)")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/secret.txt outside the preopen, tmp/data/{in.txt, sub/, link -> ../secret.txt}, tmp/out/."""
    (tmp_path / "secret.txt").write_text("secret")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "in.txt").write_text("input")
    (data / "link").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "out").mkdir()
    return tmp_path


def test_no_preopen_no_files(tmp_path: Path) -> None:
    for path in ("/etc/passwd", "etc/passwd", "../../etc/passwd"):
        assert call(tmp_path, m_open(path))["open"] != 0


def test_read_only_preopen_reads_inside_only(tree: Path) -> None:
    grant = {"preopens": (Preopen(host=tree / "data", guest="/data"),)}
    assert call(tree, m_open("in.txt"), **grant)["open"] == 0
    for escape in ("../secret.txt", "sub/../../secret.txt", "/etc/passwd", "link"):
        assert call(tree, m_open(escape), **grant)["open"] != 0, escape


def test_read_only_preopen_refuses_writes(tree: Path) -> None:
    grant = {"preopens": (Preopen(host=tree / "data", guest="/data"),)}
    assert call(tree, m_open("new.txt", write=True), **grant)["open"] != 0
    assert call(tree, m_open("in.txt", write=True), **grant)["open"] != 0
    assert not (tree / "data" / "new.txt").exists()
    assert (tree / "data" / "in.txt").read_text() == "input"


def test_writable_preopen_takes_writes(tree: Path) -> None:
    grant = {"preopens": (Preopen(host=tree / "out", guest="/out", writable=True),)}
    assert call(tree, m_open("result.txt", write=True), **grant) == {"open": 0, "write": 0}
    assert (tree / "out" / "result.txt").read_text() == "hello"
    assert call(tree, m_open("../escaped.txt", write=True), **grant)["open"] != 0
    assert not (tree / "escaped.txt").exists()


def test_nothing_inherited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_SECRET_FOR_TEST", "x")
    w = Wat()
    wat = w.command_module(f"""
    (drop (call $args_sizes_get (i32.const 100) (i32.const 104)))
    (drop (call $environ_sizes_get (i32.const 108) (i32.const 112)))
    {w.json(argc='(i32.load (i32.const 100))', argv_bytes='(i32.load (i32.const 104))',
            envc='(i32.load (i32.const 108))')}
    (call $emit_stdout)""")
    got = call(tmp_path, wat, abi="wasi-command", input="raw")
    assert got == {"argc": 1, "argv_bytes": len("fn") + 1, "envc": 0}


# -- edged.log ---------------------------------------------------------------------------------------

def m_log(level: int, text: str | bytes) -> str:
    w = Wat()
    return w.frame_module(f"""
    (local.set $errno (call $log (i32.const {level}) {w.ptr_len(text)}))
    {w.json(errno='(local.get $errno)')}
    (drop (call $emit)) (i32.const 0)""", locals_="(local $errno i32)")


def test_log_grant(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edged.function.fn")

    def lines() -> list[tuple[int, str]]:
        return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edged.function.fn"]

    assert call(tmp_path, m_log(30, "hello\nsecond \x1b[31mline")) == {"errno": 0}
    assert lines() == [(logging.WARNING, "hello"), (logging.WARNING, "second \\x1b[31mline")]
    caplog.clear()
    assert call(tmp_path, m_log(20, "not allowed"), log=False) == {"errno": 2}
    assert call(tmp_path, m_log(99, "bad level")) == {"errno": 1}
    assert call(tmp_path, m_log(20, b"\xff\xfe not UTF-8")) == {"errno": 1}
    assert lines() == []


# -- edged.http_request ------------------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[tuple[str, Seen]]:
    with serve() as (origin, seen):
        yield origin, seen


def test_allowed_host_works(tmp_path: Path, server: tuple[str, Seen]) -> None:
    origin, seen = server
    got = call(tmp_path, m_http(f"GET {origin}/hello\nX-Test: yes\n", echo=True), **reach(origin))
    assert got == {"hello": "world"}
    [(method, path, headers, _)] = seen.requests
    assert (method, path, headers["X-Test"], headers["Host"]) == ("GET", "/hello", "yes", origin[len("http://"):])


def test_post_body(tmp_path: Path, server: tuple[str, Seen]) -> None:
    origin, _ = server
    got = call(tmp_path, m_http(f"POST {origin}/echo\nContent-Type: text/plain", body=b"ping", echo=True),
               **reach(origin))
    assert got == {"body": "ping", "method": "POST"}


@pytest.mark.parametrize("allowed", [(), ("http://127.0.0.1:1",), ("https://127.0.0.1",)])
def test_host_not_allowed_is_denied(tmp_path: Path, server: tuple[str, Seen], allowed: tuple[str, ...]) -> None:
    origin, seen = server
    assert call(tmp_path, m_http(f"GET {origin}/hello"), allowed_hosts=allowed)["status"] == -2
    assert seen.requests == []


@pytest.mark.parametrize("header", ["Host: evil.example", "host: evil.example", "Connection: close",
                                    "Transfer-Encoding: chunked", "Content-Length: 5", "Proxy-Authorization: x",
                                    "Upgrade: websocket", "X-Bad: a\rb"])
def test_refused_headers(tmp_path: Path, server: tuple[str, Seen], header: str) -> None:
    origin, seen = server
    assert call(tmp_path, m_http(f"GET {origin}/hello\n{header}"), **reach(origin))["status"] == -1
    assert seen.requests == []


@pytest.mark.parametrize("request_text", ["GARBAGE", "GET", "GET  /hello", "GET ftp://127.0.0.1/x", "\n"])
def test_malformed_requests(tmp_path: Path, server: tuple[str, Seen], request_text: str) -> None:
    origin, seen = server
    assert call(tmp_path, m_http(request_text), **reach(origin))["status"] == -1
    assert seen.requests == []


def test_redirect_is_not_followed(tmp_path: Path, server: tuple[str, Seen]) -> None:
    origin, seen = server
    got = call(tmp_path, m_http(f"GET {origin}/redirect"), **reach(origin, origin.replace(".1:", ".2:")))
    assert got == {"status": 302, "len": 0}
    assert [path for _, path, _, _ in seen.requests] == ["/redirect"]


def test_response_over_capacity(tmp_path: Path, server: tuple[str, Seen]) -> None:
    origin, _ = server
    assert call(tmp_path, m_http(f"GET {origin}/big", cap=100), **reach(origin)) == {
        "status": -7, "len": 10_000}
    assert call(tmp_path, m_http(f"GET {origin}/big", cap=10_000), **reach(origin)) == {
        "status": 200, "len": 10_000}


def test_connection_failure_is_io_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    origin = f"http://127.0.0.1:{port}"
    assert call(tmp_path, m_http(f"GET {origin}/"), **reach(origin))["status"] == -5


def call_within_300_ms(tmp_path: Path, request_text: str, origin: str) -> tuple[Any, float]:
    """The request from a function with a 300 ms timeout: its JSON result (None if it timed out), and how
    long the call took in seconds (pool start-up excluded)."""
    path = write_wasm(tmp_path, "fn", m_http(request_text))
    functions = {"fn": FunctionSettings(module=path, timeout_ms=300, **reach(origin))}
    with FunctionPool(functions, PoolSettings(workers=1, queue=0), tmp_path / "cache") as pool:
        started = time.monotonic()
        try:
            result = call_sync(pool, "fn", FRAME).json
        except FunctionTimeout:
            result = None
        return result, time.monotonic() - started


def test_request_bounded_by_call_timeout(tmp_path: Path, server: tuple[str, Seen]) -> None:
    """The server answers /slow only after SERVER_HOLD_SECONDS; the call's 300 ms end the request (host
    code is not interrupted by epochs, so the host must bound it itself)."""
    origin, seen = server
    got, elapsed = call_within_300_ms(tmp_path, f"GET {origin}/slow", origin)
    seen.release.set()
    assert got in (None, {"status": -5, "len": 0})
    assert elapsed < CALL_BOUND_SECONDS


def test_a_name_is_looked_up_and_kept_in_the_host_header(tmp_path: Path, server: tuple[str, Seen],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dns = FakeDns(monkeypatch)
    port = server[0].rsplit(":", 1)[1]
    origin = f"http://camera-cloud.test:{port}"
    got = call(tmp_path, m_http(f"GET {origin}/hello", echo=True), **reach(origin))
    assert got == {"hello": "world"}
    assert dns.asked == ["camera-cloud.test"]
    [(_, _, headers, _)] = server[1].requests
    assert headers["Host"] == f"camera-cloud.test:{port}"


def test_a_slow_name_lookup_is_bounded_by_the_call_timeout(tmp_path: Path, server: tuple[str, Seen],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver has no timeout of its own; the call must not wait for it past its deadline."""
    dns = FakeDns(monkeypatch, hold=True)
    origin = f"http://stuck-dns.test:{server[0].rsplit(':', 1)[1]}"
    got, elapsed = call_within_300_ms(tmp_path, f"GET {origin}/hello", origin)
    lookup_was_pending = not dns.finished.is_set()
    dns.go.set()
    assert lookup_was_pending
    assert dns.asked == ["stuck-dns.test"]
    assert got in (None, {"status": -5, "len": 0})
    assert elapsed < CALL_BOUND_SECONDS
    assert server[1].requests == []


# -- http.client's private connection hook: checked at import, with a fallback ------------------------

def test_http_clients_hook_is_checked_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    assert host_connect.PINNED_BY_HOOK, "the installed Python must still connect through _create_connection"

    def connect(self: http.client.HTTPConnection) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.timeout)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", connect)
    assert not host_connect._has_connection_hook()  # noqa: SLF001


def test_without_the_hook_the_host_connects_the_socket_itself(tmp_path: Path, server: tuple[str, Seen],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback as a whole: http.client's connect (and its private hook) is never used."""
    def not_used(self: http.client.HTTPConnection) -> None:
        raise AssertionError("HTTPConnection.connect was used although the hook check failed")

    monkeypatch.setattr(host_connect, "PINNED_BY_HOOK", False)
    monkeypatch.setattr(http.client.HTTPConnection, "connect", not_used)
    dns = FakeDns(monkeypatch)
    port = server[0].rsplit(":", 1)[1]
    origin = f"http://camera-cloud.test:{port}"
    got = call(tmp_path, m_http(f"POST {origin}/echo", body=b"ping", echo=True), **reach(origin))
    assert got == {"body": "ping", "method": "POST"}
    assert dns.asked == ["camera-cloud.test"]
    [(_, _, headers, _)] = server[1].requests
    assert headers["Host"] == f"camera-cloud.test:{port}"
