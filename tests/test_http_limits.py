"""Slow and greedy clients against the real daemon (``python -m edged run``) over real sockets: half-sent
requests are closed by the header timeout, connections past max_connections get a 503 at once, a stalled
body is cut off, a slow but steady one is served, and a gzip bomb is refused without inflating."""

from __future__ import annotations

import gzip
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.configs import daemon_config, write_config
from tests.daemon import Daemon, run_daemon
from tests.test_http import GRAY, encoded
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]

HALF_SENT = b"POST /v1/functions/grayscale HTTP/1.1\r\nHost: x\r\nContent-Le"


def config(tmp_path: Path, **http: Any) -> Path:
    return write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state", http=http, functions={"grayscale": {"module": GRAY}}))


def call(d: Daemon, path: str, data: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(d.url + path, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(d: Daemon, line_start: str) -> float:
    _status, body = call(d, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def connect(d: Daemon, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection((d.host, d.port), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


@contextmanager
def sockets(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def wait_closed_by_server(socks: list[socket.socket], within: float) -> float:
    """Seconds until the server closed every socket (each read gives b""); fails on data or on time."""
    started = time.monotonic()
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        left = len(socks)
        while left:
            remaining = started + within - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{left} of {len(socks)} connections still open after {within} s")
            for key, _ in selector.select(timeout=remaining):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.recv(4096) == b"", "the server answered instead of closing"
                selector.unregister(sock)
                left -= 1
    return time.monotonic() - started


def process_figures(pid: int) -> dict[str, int]:
    """The daemon's resident memory (KiB, now and peak) and open descriptors."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "hwm_kib": int(fields["VmHWM"].split()[0]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def test_half_sent_requests_do_not_stop_a_normal_one_and_are_closed(tmp_path: Path) -> None:
    with run_daemon(config(tmp_path, header_timeout=5.0)) as d, \
            sockets([connect(d, HALF_SENT) for _ in range(200)]) as held:
        status, body = call(d, "/v1/functions/grayscale", encoded("PNG"))
        assert status == 200, body
        # All 200 were still open while that was served (the gauge counts this request's connection too).
        assert metric(d, "edged_http_connections") >= 201
        took = wait_closed_by_server(held, within=5.0 + 20)
        assert took >= 2.0  # not before the timeout (5 s from their connect, a little of it spent above)
        wait_until(lambda: metric(d, 'edged_http_timeouts_total{phase="header"}') >= 200, 10, "200 header timeouts")
        assert call(d, "/healthz")[0] == 200


def test_headers_dribbled_forever_are_cut_at_the_header_timeout(tmp_path: Path) -> None:
    with run_daemon(config(tmp_path, header_timeout=1.0)) as d, sockets([connect(d)]) as (sock,):
        # One header byte at a time, each well inside the timeout: the total is what counts.
        started = time.monotonic()
        for byte in HALF_SENT + b"ngth: 1" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if time.monotonic() - started > 10:
                pytest.fail("the server never closed a connection dribbling its headers")
            time.sleep(0.02)  # pacing the client, the behaviour under test; not ordering
        assert time.monotonic() - started < 10
        wait_closed_by_server([sock], within=10)


def test_past_max_connections_new_ones_get_503_then_service_resumes(tmp_path: Path) -> None:
    with run_daemon(config(tmp_path, max_connections=20, header_timeout=60.0)) as d:
        with sockets([connect(d) for _ in range(20)]) as held:
            wait_until(lambda: _refused(d), 20, "a connection past the 20 held ones to be refused")
            with sockets([connect(d) for _ in range(15)]) as extra:
                for sock in extra:  # refused at once, never left waiting: each gets the answer and a close
                    answer = _read_all(sock)
                    assert answer.startswith(b"HTTP/1.1 503 "), answer
                # Past max_connections refusals lingering for their peers to read, a flood is just closed.
                with sockets([connect(d) for _ in range(100)]) as flood:
                    for sock in flood:
                        answer = _read_all(sock)
                        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
            # The held connections were served all along: one of them still takes a request.
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_all(held[0]).startswith(b"HTTP/1.1 200 ")
        wait_until(lambda: call(d, "/healthz")[0] == 200, 20, "service once the held connections went away")
        status, _ = call(d, "/v1/functions/grayscale", encoded("PNG"))
        assert status == 200
        assert metric(d, "edged_http_refused_connections_total") >= 116


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after its answer counts as a close)."""
    sock.settimeout(10)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _refused(d: Daemon) -> bool:
    with sockets([connect(d, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")]) as (sock,):
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 503 "):
        return False
    assert b"Retry-After: 1" in head
    assert b"application/json" in head
    assert json.loads(body) == {"error": "overloaded", "detail": "too many open connections"}
    return True


def _post_head(length: int) -> bytes:
    return (f"POST /v1/functions/grayscale HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            "Connection: close\r\n\r\n").encode()


def test_a_stalled_body_is_cut_off_and_a_slow_steady_one_is_served(tmp_path: Path) -> None:
    image = encoded("PNG", (320, 240))
    with run_daemon(config(tmp_path, body_idle_timeout=1.0, header_timeout=1.0)) as d:
        with sockets([connect(d, _post_head(len(image)) + image[:100])]) as (stalled,):
            started = time.monotonic()
            answer = _read_all(stalled)
            assert time.monotonic() - started < 8
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(body)["error"] == "body_timeout"
        assert metric(d, 'edged_http_timeouts_total{phase="body"}') == 1
        # 3 s in all, longer than either timeout, but never 1 s without a byte.
        with sockets([connect(d, _post_head(len(image)))]) as (steady,):
            pieces = 10
            step = -(-len(image) // pieces)
            for i in range(pieces):
                time.sleep(0.3)  # pacing the client, the behaviour under test; not ordering
                steady.sendall(image[i * step:(i + 1) * step])
            answer = _read_all(steady)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_a_gzip_bomb_is_refused_without_inflating(tmp_path: Path) -> None:
    member = gzip.compress(bytes(16 * 1024 * 1024), compresslevel=9)
    bomb = member * 64  # 1 GiB of zeros once inflated, ~1 MB sent
    with run_daemon(config(tmp_path, max_body_bytes=20 * 1024 * 1024)) as d:
        before = process_figures(d.proc.pid)
        request = urllib.request.Request(d.url + "/v1/functions/grayscale", data=bomb,
                                         headers={"Content-Encoding": "gzip"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"] == "too_large"
        after = process_figures(d.proc.pid)
        # At most max_body_bytes (20 MiB) and the pieces around it, never the gigabyte.
        assert after["hwm_kib"] - before["hwm_kib"] < 120 * 1024, (before, after)
        assert call(d, "/healthz")[0] == 200


FD_PROBE = """
import logging, resource, sys
from edged.ingest.listener import ensure_fd_limit
from edged.settings import HttpSettings
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
ensure_fd_limit(HttpSettings(max_connections=512))
print("soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(("soft", "hard", "raised_to", "warns"), [
    (300, 20_000, 2 * 512 + 256, False),  # raised within the hard limit
    (300, 600, 600, True),                # as far as the hard limit goes, and said so
    (4096, 20_000, 4096, False),          # already enough: left alone
])
def test_descriptor_limit_is_raised_for_max_connections(soft: int, hard: int, raised_to: int, warns: bool) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip("this process may not set so high a hard limit")
    out = subprocess.run([sys.executable, "-c", FD_PROBE, str(soft), str(hard)], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert f"soft {raised_to}" in out
    assert ("descriptor limit 600 is under 1280" in out) == warns, out


def test_bodies_are_reserved_against_the_memory_budget(tmp_path: Path) -> None:
    """A body that can never fit the budget is a 413 before it is read; one that fits is served, and the
    budget is all given back after it."""
    cfg = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state", http={"max_body_bytes": 64 * 1024 * 1024},
        limits={"memory_mb": 200, "reserve_mb": 180},  # 20 MiB for work: a 64 MiB unsized body never fits
        functions={"grayscale": {"module": GRAY, "memory_mb": 8}}))
    image = encoded("PNG", (32, 24))
    with run_daemon(cfg) as d:
        unsized = urllib.request.Request(d.url + "/v1/functions/grayscale", data=iter([image]),
                                         headers={"Transfer-Encoding": "chunked"})
        try:
            with urllib.request.urlopen(unsized, timeout=30) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        assert status == 413, body
        assert json.loads(body)["error"] == "too_large"
        assert call(d, "/v1/functions/grayscale", image)[0] == 200
        wait_until(lambda: metric(d, "edged_memory_budget_in_use_bytes") == 0, 10, "the budget given back")
