"""``edged.http_request`` against DNS rebinding and malformed URLs: every refusal is an errno, logged once.

A guest reads its request from the raw input (``u32 repeat`` then the request text), makes it that many
times and reports the last status, so one pool serves every case.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.host import addresses, http
from edged.wasm.host.connect import AddrInfo
from edged.wasm.host.guard import Refused
from edged.wasm.pool import FunctionPool
from tests.outbound import FakeDns, Seen, reach, serve
from tests.pools import call_sync
from tests.wat import RESP_BUF, RESP_LEN, Wat, raw_frame, write_wasm

pytestmark = pytest.mark.timeout(120)

LOGGER = "edged.function.fn"


def _guest() -> str:
    w = Wat()
    return w.frame_module(f"""
    (local.set $n (i32.load (i32.add (local.get $ptr) (i32.const 32))))
    (loop $again
      (local.set $status (call $http (i32.add (local.get $ptr) (i32.const 36))
                                     (i32.sub (local.get $len) (i32.const 36)) (i32.const 0) (i32.const 0)
                                     (i32.const {RESP_BUF}) (i32.const 4096) (i32.const {RESP_LEN})))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $again (i32.gt_s (local.get $n) (i32.const 0))))
    {w.json(status='(local.get $status)', len=f'(i32.load (i32.const {RESP_LEN}))')}
    (drop (call $emit)) (i32.const 0)""", locals_="(local $n i32) (local $status i32)")


class Outbound:
    """A pool of the request-making guest under several grants, and the loopback server it may reach."""

    def __init__(self, pool: FunctionPool, origin: str, seen: Seen) -> None:
        self.pool, self.origin, self.seen = pool, origin, seen
        self.port = int(origin.rsplit(":", 1)[1])

    def status(self, fn: str, request: str | bytes, repeat: int = 1) -> int:
        text = request.encode() if isinstance(request, str) else request
        result: dict[str, Any] | None = call_sync(self.pool, fn, raw_frame(struct.pack("<I", repeat) + text)).json
        assert result is not None
        status: int = result["status"]
        return status


@pytest.fixture
def outbound(tmp_path: Path) -> Iterator[Outbound]:
    with serve() as (origin, seen):
        port = origin.rsplit(":", 1)[1]
        name = f"http://camera-cloud.test:{port}"
        path = write_wasm(tmp_path, "fn", _guest())

        def fn(**grant: Any) -> FunctionSettings:
            return FunctionSettings(module=path, input="raw", timeout_ms=3000, **grant)

        functions = {
            "fn": fn(allowed_hosts=(name, origin, f"http://[::1]:{port}")),
            "lan": fn(**reach(name, origin)),
        }
        with FunctionPool(functions, PoolSettings(workers=1, queue=1), tmp_path / "cache") as pool:
            yield Outbound(pool, origin, seen)


def test_an_allowed_name_resolving_to_loopback_is_refused(outbound: Outbound, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The rebinding case: an allowlisted name now answers 127.0.0.1, where the Dapr sidecar and edged's
    own API listen. Without private_hosts nothing connects; with it the same request goes through."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    dns = FakeDns(monkeypatch)
    request = f"GET http://camera-cloud.test:{outbound.port}/hello"
    assert outbound.status("fn", request) == -2
    assert outbound.seen.requests == []
    assert dns.asked == ["camera-cloud.test"]
    [warning] = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert "127.0.0.1 (loopback)" in warning.getMessage()
    assert "private_hosts" in warning.getMessage()

    assert outbound.status("lan", request) == 200
    assert [path for _, path, _, _ in outbound.seen.requests] == ["/hello"]


@pytest.mark.parametrize(("answer", "kind"), [
    (("::1",), "loopback"), (("::ffff:127.0.0.1",), "loopback"), (("127.8.9.10",), "loopback"),
    (("0.0.0.0",), "unspecified"), (("::",), "unspecified"), (("10.1.2.3",), "private"),
    (("169.254.169.254",), "link-local"), (("::ffff:192.168.1.1",), "private"),
    (("127.0.0.1", "10.0.0.1"), "loopback")])
def test_every_non_public_answer_is_refused_before_connecting(
        outbound: Outbound, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        answer: tuple[str, ...], kind: str) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    connected: list[object] = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda sock, addr: (connected.append(addr), real_connect(sock, addr)))
    FakeDns(monkeypatch, answer=answer)
    assert outbound.status("fn", f"GET http://camera-cloud.test:{outbound.port}/hello") == -2
    assert connected == []
    [warning] = [r for r in caplog.records if r.name == LOGGER]
    assert f"({kind})" in warning.getMessage()


def test_a_private_ip_literal_needs_private_hosts_too(outbound: Outbound) -> None:
    assert outbound.status("fn", f"GET {outbound.origin}/hello") == -2
    assert outbound.status("fn", f"GET http://[::1]:{outbound.port}/hello") == -2
    assert outbound.seen.requests == []
    assert outbound.status("lan", f"GET {outbound.origin}/hello") == 200


def test_refusals_are_logged_once_per_call(outbound: Outbound, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert outbound.status("fn", f"GET {outbound.origin}/hello", repeat=50) == -2
    levels = [r.levelno for r in caplog.records if r.name == LOGGER and "refused" in r.getMessage()]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 49


def _addrinfo(*ips: str) -> list[AddrInfo]:
    return [info for ip in ips for info in socket.getaddrinfo(ip, 80, type=socket.SOCK_STREAM)]


def test_screening_keeps_only_public_addresses() -> None:
    req = http.parse_request("GET http://mixed.test/", ("http://mixed.test:80",))
    mixed = _addrinfo("127.0.0.1", "192.0.2.7", "fd00::1", "2001:db8::7")
    assert [info[4][0] for info in http.screen(req, mixed, private=False)] == ["192.0.2.7", "2001:db8::7"]
    assert http.screen(req, mixed, private=True) == mixed
    with pytest.raises(Refused, match=r"127\.0\.0\.1 \(loopback\), fd00::1 \(private\)"):
        http.screen(req, _addrinfo("127.0.0.1", "fd00::1"), private=False)


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("::127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"), ("::", "unspecified"), ("::ffff:0.0.0.0", "unspecified"),
    ("169.254.1.1", "link-local"), ("fe80::1%eth0", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.0.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("::ffff:10.0.0.1", "private"), ("100.64.0.1", "private"), ("not an address", "unspecified"),
    ("8.8.8.8", None), ("172.32.0.1", None), ("192.0.2.1", None), ("2001:4860:4860::8888", None),
    ("::ffff:8.8.8.8", None), ("172.15.255.255", None)])
def test_address_kinds(address: str, kind: str | None) -> None:
    assert addresses.non_public(address) == kind
    assert addresses.non_public((address, 80)) == kind


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/caf\u00e9", "http://127.0.0.1:{port}/?q=\u00e9", "http://ex\u00e4mple.test:{port}/",
    "http://127.0.0.1:{port}/\u0085", "http://127.0.0.1:{port}/" + "a" * 9000, "http://127.0.0.1:99999/",
    "http://127.0.0.1:0/", "http://127.0.0.1:-1/", "http://127.0.0.1:x/", "http://[::1/", "http://[zz]:{port}/",
    "http://[fe80::1%25eth0]:{port}/", "http://u:p@127.0.0.1:{port}/", "http://u@127.0.0.1:{port}/",
    "http://127.0.0.1:{port}/\x00", "http://127.0.0.1:{port}/a\tb", "http://a..b.test:{port}/",
    "http://.test:{port}/", "http://" + "a" * 64 + ".test:{port}/", "http://127.1:{port}/",
    "http://-a.test:{port}/", "http:///hello", "http://:{port}/"])
def test_malformed_urls_are_invalid_argument(outbound: Outbound, caplog: pytest.LogCaptureFixture,
                                             url: str) -> None:
    caplog.set_level(logging.DEBUG)
    assert outbound.status("lan", "GET " + url.replace("{port}", str(outbound.port))) == -1
    assert outbound.seen.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("request_text", [
    b"GET http://127.0.0.1:{port}/hello\nX-Name: caf\xc3\xa9", b"GET http://127.0.0.1:{port}/hello\nX-A: \xe2\x80\xa8",
    b"GET http://127.0.0.1:{port}/ hello", b"GET http://127.0.0.1:{port}/\xff"])
def test_malformed_requests_are_invalid_argument(outbound: Outbound, caplog: pytest.LogCaptureFixture,
                                                 request_text: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    assert outbound.status("lan", request_text.replace(b"{port}", str(outbound.port).encode())) == -1
    assert outbound.seen.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_private_host_must_be_allowed() -> None:
    with pytest.raises(ValidationError, match="must also be in allowed_hosts"):
        FunctionSettings(module=Path("/x.wasm"), allowed_hosts=("http://a.test",), private_hosts=("http://b.test",))
    fn = FunctionSettings(module=Path("/x.wasm"), allowed_hosts=("http://nvr.lan:5000",),
                          private_hosts=("http://NVR.lan:5000/",))
    assert fn.private_hosts == ("http://nvr.lan:5000",)


@pytest.mark.parametrize("origin", ["http://ex\u00e4mple.com", "http://a..b", "http://[fe80::1%25eth0]", "http://h:0"])
def test_an_unusable_origin_is_a_config_error(origin: str) -> None:
    with pytest.raises(ValidationError, match="allowed_hosts"):
        FunctionSettings(module=Path("/x.wasm"), allowed_hosts=(origin,))
