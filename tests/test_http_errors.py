"""Every bad request is a JSON 4xx of the one error shape, over raw loopback HTTP (bytes as a client sends
them, undecodable ones included) against an in-process daemon. Routes and methods come from the app's own
router, so a route added later is walked too."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from edged.app import App
from edged.ingest import listener
from edged.settings import FunctionSettings
from tests.test_http import GRAY, daemon, encoded
from tests.test_pool import m_ok
from tests.wat import write_wasm

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
BAD_AUTH = (b"", b"Authorization: Bearer wrong\r\n", b"Authorization: Bearer \xff\xfe\r\n",
            b"Authorization: Bearer\r\n", b"Authorization: Basic czNjcmV0\r\n", b"Authorization: \x80\x9b\r\n")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, str]:
        payload = json.loads(self.body)
        assert isinstance(payload, dict)
        return payload


async def send(port: int, method: str, target: str, headers: bytes = b"", body: bytes = b"") -> Answer:
    """One request on its own connection, as raw bytes; the whole answer (``Connection: close``)."""
    length = f"Content-Length: {len(body)}\r\n".encode() if body or method in ("POST", "PUT", "PATCH") else b""
    return await exchange(port, f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                          + length + headers + b"\r\n" + body)


async def exchange(port: int, request: bytes) -> Answer:
    """``request`` sent as is on a new connection; the answer, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split(" ")[1]), parsed, rest)


def assert_error(answer: Answer, status: int | None = None, code: str | None = None, *, head: bool = False) -> None:
    assert 400 <= answer.status < 500, answer
    if status is not None:
        assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    if head:
        return  # a HEAD answer has no body
    payload = answer.json()
    assert set(payload) == {"error", "detail"}, payload
    assert isinstance(payload["error"], str)
    assert payload["error"]
    assert isinstance(payload["detail"], str)
    if code is not None:
        assert payload["error"] == code, payload


def routes(app: App) -> dict[str, set[str]]:
    """Each registered path (``{name}`` filled in) and the methods it takes, from the app's router."""
    table: dict[str, set[str]] = {}
    for resource in app.http.application().router.resources():
        path = resource.canonical.replace("{name}", "grayscale").replace("{id}", "0" * 32)
        assert "{" not in path, f"fill in the placeholder of {resource.canonical}"
        table.setdefault(path, set()).update(route.method for route in resource)
    return table


async def test_every_route_and_method_answers_json_4xx(tmp_path: Path) -> None:
    async with daemon(tmp_path, http={"token": TOKEN}) as (app, _session, _base):
        port = app.http_port
        assert port is not None
        table = routes(app)
        assert "/v1/functions/grayscale" in table
        assert "/healthz" in table
        checked = 0
        for path, allowed in table.items():
            for method in METHODS:
                if method not in allowed:
                    answer = await send(port, method, path, AUTH)
                    assert_error(answer, 405, "method_not_allowed", head=method == "HEAD")
                    assert set(answer.headers["allow"].split(",")) == allowed, (path, method)
                    checked += 1
                if path in ("/healthz", "/readyz", "/", "/static/grayscale"):  # open: the probes, the dashboard
                    continue
                for bad in BAD_AUTH:
                    answer = await send(port, method, path, bad)
                    assert_error(answer, 401, "unauthorized", head=method == "HEAD")
                    assert answer.headers["www-authenticate"].startswith("Bearer")
                    checked += 1
        for path in ("/nope", "/v1", "/v1/functions/grayscale/x", "/%ff%fe", "/v1/functions/", "//"):
            for method in METHODS:
                assert_error(await send(port, method, path, AUTH), 404, "not_found", head=method == "HEAD")
                checked += 1
        assert checked > 100
        # And it still serves.
        ok = await send(port, "POST", "/v1/functions/grayscale", AUTH, encoded("PNG"))
        assert ok.status == 200


async def test_bad_camera_is_refused_before_any_function_runs(tmp_path: Path) -> None:
    fns = {"ok": FunctionSettings(module=write_wasm(tmp_path, "ok", m_ok()))}
    async with daemon(tmp_path, fns) as (app, session, base):
        port = app.http_port
        assert port is not None
        image = encoded("PNG")
        for value in (b"caf\xc3\xa9", b"\xff", b"cam\xc2\x9b2J", b"a" * 129, b"a/b", b"+", b"#", b"   ", b"",
                      b"cam\x1b[31m"):
            answer = await send(port, "POST", "/v1/functions/ok", b"X-Camera: " + value + b"\r\n", image)
            assert_error(answer, 400, "bad_request")
            # aiohttp's parser refuses C0 controls in any header itself; the rest are edged's check.
            assert ("X-Camera" if b"\x1b" not in value else "header value") in answer.json()["detail"]
        async with session.get(f"{base}/v1/functions") as resp:
            assert (await resp.json())["functions"][0]["calls"] == 0  # refused before it ran
        answer = await send(port, "POST", "/v1/functions/ok", b"X-Camera: front door-1\r\n", image)
        assert answer.status == 200, answer
        async with session.get(f"{base}/v1/functions") as resp:
            assert (await resp.json())["functions"][0]["calls"] == 1


def gzip_bomb(decoded: int, member: int = 8 * 1024 * 1024) -> bytes:
    """gzip members of zeros, concatenated: ``decoded`` bytes once inflated, ~1/1000 of that on the wire."""
    one = gzip.compress(bytes(member), compresslevel=9)
    return one * (decoded // member)


async def test_content_encoding(tmp_path: Path) -> None:
    image = encoded("PNG")
    raw_deflate = zlib.compressobj(wbits=-15)
    async with daemon(tmp_path, http={"max_body_bytes": 1_000_000}) as (app, session, base):
        port = app.http_port
        assert port is not None
        target = "/v1/functions/grayscale"
        for encoding, body in (("gzip", gzip.compress(image)), ("deflate", zlib.compress(image)),
                               ("deflate", raw_deflate.compress(image) + raw_deflate.flush()),
                               ("identity", image), ("GZIP", gzip.compress(image))):
            answer = await send(port, "POST", target, f"Content-Encoding: {encoding}\r\n".encode(), body)
            assert answer.status == 200, (encoding, answer)
        for encoding in ("gzip", "deflate"):
            answer = await send(port, "POST", target, f"Content-Encoding: {encoding}\r\n".encode(), image)
            assert_error(answer, 400, "bad_body")
        for encoding in (b"compress", b"gzip, gzip", b"x-custom", b"\xff"):
            answer = await send(port, "POST", target, b"Content-Encoding: " + encoding + b"\r\n", image)
            assert_error(answer, 415, "unsupported_encoding")
        for encoding in (b"br", b"zstd"):  # refused by aiohttp's parser (no decoder installed) or by edged
            answer = await send(port, "POST", target, b"Content-Encoding: " + encoding + b"\r\n", image)
            assert_error(answer)
            assert answer.status in (400, 415)
        # 64 MiB of zeros in ~65 KB: refused once the decoded bytes pass max_body_bytes.
        answer = await send(port, "POST", target, b"Content-Encoding: gzip\r\n", gzip_bomb(64 * 1024 * 1024))
        assert_error(answer, 413, "too_large")
        assert "decoded" in answer.json()["detail"]
        async with session.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        assert 'edged_rejected_inputs_total{code="bad_body",source="http"} 2.0' in metrics
        assert 'edged_rejected_inputs_total{code="unsupported_encoding",source="http"} 4.0' in metrics
        assert (await send(port, "POST", target, b"", image)).status == 200


def eps(width: int, height: int) -> bytes:
    return f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 {width} {height}\n%%EndComments\n".encode()


@pytest.mark.parametrize("size", [(64, 48), (10_000, 10_000), (20_000, 20_000)])
async def test_unsupported_format_is_415_whatever_its_size(tmp_path: Path, size: tuple[int, int]) -> None:
    # Past Pillow's own pixel bound (89 MP warns, an error under this suite's filterwarnings; 179 MP raises)
    # an EPS used to be too_many_pixels (422): the format is what is wrong with it.
    async with daemon(tmp_path, {"grayscale": FunctionSettings(module=GRAY)}) as (app, _session, _base):
        assert app.http_port is not None
        answer = await send(app.http_port, "POST", "/v1/functions/grayscale", b"", eps(*size))
        assert_error(answer, 415, "unsupported_format")


MALFORMED = {
    "non-ASCII path": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    "not HTTP": b"HELLO THERE\r\n\r\n",
    "bad Content-Length": b"POST /v1/functions/grayscale HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    "header too long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    "control character in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Camera: \x1b[2J\r\n\r\n",
    "bad chunk size": (b"POST /v1/functions/grayscale HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nabc\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("json_errors", [True, False], ids=["json", "aiohttp-fallback"])
async def test_malformed_requests_get_4xx_and_the_daemon_serves_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   json_errors: bool) -> None:
    # The fallback is what runs when aiohttp's handle_error no longer looks as JsonErrorHandler expects.
    monkeypatch.setattr(listener, "JSON_PARSE_ERRORS", json_errors)
    async with daemon(tmp_path) as (app, _session, _base):
        port = app.http_port
        assert port is not None
        for case, request in MALFORMED.items():
            answer = await exchange(port, request)
            assert 400 <= answer.status < 500, (case, answer)
            if json_errors:
                assert_error(answer, answer.status)
            else:
                assert answer.headers["content-type"].startswith("text/plain"), (case, answer)
        assert (await send(port, "POST", "/v1/functions/grayscale", b"", encoded("PNG"))).status == 200


def test_the_handle_error_check_refuses_another_signature() -> None:
    class Renamed:
        def handle_error(self, request: object, status: int = 500, exc: object = None) -> None: ...

    assert listener._handle_error_fits(web.RequestHandler)  # noqa: SLF001 (the import-time check itself)
    assert not listener._handle_error_fits(Renamed)  # noqa: SLF001
    assert not listener._handle_error_fits(object)  # noqa: SLF001
