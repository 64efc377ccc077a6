"""Fuzzing the HTTP API: generated requests, as raw bytes over loopback, against an in-process daemon.

Methods (the usual ones and made-up tokens), paths (every registered route, random ones, queries),
headers (Authorization right, wrong or undecodable; X-Camera; Content-Encoding with bodies that match
it or not; Content-Length right, short, long, malformed or doubled; chunked framing, whole or broken;
the legacy ``api`` header; a random extra header) and bodies (random bytes, valid and mutated images
from tests/image_mutations.py).

For every request: an answer comes within ``ANSWER_SECONDS``; each answer on the connection is a 2xx,
or a 4xx/503/504 in JSON of the one error shape ``{"error", "detail"}``, never a 500; and nothing is
logged at ERROR or with a traceback. Afterwards the daemon still serves.

The short run is part of the suite; ``EDGED_FUZZ_EXAMPLES=N`` runs ``N`` requests (``make fuzz``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import strategies as st

from edged.ingest import listener
from edged.settings import FunctionSettings
from tests.fuzzing import LONG_EXAMPLES, Tally, explore
from tests.image_mutations import Reader, from_blob
from tests.test_http import GRAY, daemon, encoded
from tests.test_http_errors import routes
from tests.test_pool import m_ok
from tests.wat import write_wasm

pytestmark = pytest.mark.timeout(36000 if LONG_EXAMPLES else 300)

SHORT_EXAMPLES = 400
TOKEN = "fuzz-token"
#: Longest wait for the answer to one request (the body idle timeout is far shorter): past it, a hang.
ANSWER_SECONDS = 20.0
BODY_IDLE = 0.3
ERROR_STATUSES = frozenset(range(400, 500)) | {503, 504}
_METHODS = (b"POST", b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"POST",
            b"GET", b"TRACE", b"CONNECT", b"PRI", b"get", b"G\xffT", b"")
_AUTH = (b"", b"Bearer wrong", b"Bearer \xff\xfe", b"Bearer", b"Basic Zm9vOmJhcg==", b"\x80\x9b",
         b"bearer " + TOKEN.encode(), b"Bearer " + TOKEN.encode() + b" ", b"Bearer " + TOKEN.encode() * 2)
_CAMERAS = (b"front", b"caf\xc3\xa9", b"\xff", b"a" * 129, b"a/b", b"+", b"#", b"   ", b"", b"cam \xc2\x9b")
_ENCODINGS = (b"gzip", b"deflate", b"identity", b"GZIP", b"br", b"zstd", b"compress", b"gzip, gzip", b"x", b"\xff")
_APIS = (b"rs", b"go", b"grayscale", b"ok", b"nope", b"", b"\xff")
_FIXED_PATHS = ("/", "//", "/v1", "/v1/functions/", "/v1/functions/nope", "/v1/functions/grayscale/x", "/%ff%fe",
                "/api/image?x=1", "/metrics?", "/v1/functions/ok?a=%00", "*", "http://x/healthz")


@dataclass(frozen=True)
class Request:
    raw: bytes
    head: bool  # a HEAD request: its answers carry no body

    def __repr__(self) -> str:  # what hypothesis prints for a failing input
        return f"Request({self.raw[:600]!r}{'...' if len(self.raw) > 600 else ''})"


def _clean(value: bytes) -> bytes:
    """A header value that keeps the request's framing: CR and LF would end the header early."""
    return value.replace(b"\r", b"").replace(b"\n", b"")


def _body(r: Reader) -> bytes:
    kind = r.int(1) % 6
    if kind == 5:
        return b""
    if kind == 4:
        return r.take(r.int(2) % 2048)
    return from_blob(r.rest())  # an image, valid or mutated, or random bytes after a magic


def _encode(body: bytes, encoding: bytes, r: Reader) -> bytes:
    """The body as its Content-Encoding says, most of the time; else as is (a lie the server must catch)."""
    if r.int(1) % 4 == 3:
        return body
    if encoding.lower() == b"gzip":
        return gzip.compress(body, compresslevel=1)
    if encoding == b"deflate":
        return zlib.compress(body, 1)
    return body


def _chunked(body: bytes, r: Reader) -> bytes:
    size = 1 + r.int(2) % 4096
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    if r.int(1) % 4 == 3:  # broken framing: a wrong size, or the end cut off
        framed = framed[:max(0, len(framed) - 1 - r.int(1))] if r.int(1) % 2 else b"zz\r\n" + framed
    return framed


def build(blob: bytes, paths: tuple[str, ...]) -> Request:
    """A request from ``blob``: every choice is read off it, so hypothesis explores them all."""
    r = Reader(blob)
    method = r.pick(_METHODS)
    # Rare branches take a non-zero byte: a short blob reads as zeros, and should make a well-formed request.
    if r.int(1) % 16 == 15:
        method = _clean(r.take(1 + r.int(1) % 12)).replace(b" ", b"")
    target = r.pick(paths).encode()
    if r.int(1) % 8 == 7:
        target = b"/" + _clean(r.take(r.int(1) % 40)).replace(b" ", b"%20")
    headers = [b"Host: x", b"Connection: close"]
    auth = r.int(1)
    if auth < 190:
        headers.append(b"Authorization: Bearer " + TOKEN.encode())
    elif auth < 250:
        headers.append(b"Authorization: " + r.pick(_AUTH))
    else:
        headers.append(b"Authorization: " + _clean(r.take(r.int(1) % 32)))
    if r.int(1) % 3 == 2:
        headers.append(b"X-Camera: " + (r.pick(_CAMERAS) if r.int(1) % 4 else _clean(r.take(r.int(1) % 24))))
    if target.startswith(b"/api/image") or r.int(1) % 8 == 7:
        headers.append(b"api: " + r.pick(_APIS))
    encoding = r.pick(_ENCODINGS) if r.int(1) % 4 == 3 else None
    if r.int(1) % 10 == 9:
        headers.append(b"Content-Type: " + _clean(r.take(r.int(1) % 24)))
    if r.int(1) % 10 == 9:
        name = bytes(c for c in r.take(1 + r.int(1) % 16) if 0x21 <= c < 0x7F and c != ord(":")) or b"X-Fuzz"
        headers.append(name + b": " + _clean(r.take(r.int(1) % 64)))
    framing = r.int(1) % 16
    body = _body(r)
    if encoding is not None:
        headers.append(b"Content-Encoding: " + encoding)
        body = _encode(body, encoding, r)
    if framing == 15:
        headers.append(b"Transfer-Encoding: chunked")
        body = _chunked(body, r)
    elif framing == 14:  # short: the rest reads as the next request on the connection
        headers.append(b"Content-Length: %d" % max(0, len(body) - 1 - r.int(1)))
    elif framing == 13:  # long: the body stalls, and the idle timeout must end it (rare, as it costs time)
        headers.append(b"Content-Length: %d" % (len(body) + 1 + r.int(1)))
    elif framing == 12:
        headers.append(b"Content-Length: " + r.pick((b"-1", b"abc", b"1e3", b"99999999999999999999", b"0x10", b"")))
    elif framing == 11:
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    elif framing != 10 or body:  # 10: no length at all, when there is no body
        headers.append(b"Content-Length: %d" % len(body))
    raw = method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body
    return Request(raw, head=method == b"HEAD")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    head_body: bool = False  # the answer to a HEAD request carried a body


def parse_answers(raw: bytes, head: bool) -> list[Answer]:
    """Every HTTP answer in ``raw`` (several when the request's extra bytes read as another request)."""
    answers = []
    while raw.startswith(b"HTTP/"):
        top, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"an answer cut short: {raw[:300]!r}"
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        # A HEAD answer has no body; but aiohttp's parse-error answers carry one whatever the method, then
        # close: told apart by the connection ending right after those bytes.
        head_body = head and not answers and 0 < length == len(rest)
        if head and not answers and not head_body:
            length = 0
        answers.append(Answer(int(lines[0].split(" ")[1]), headers, rest[:length], head_body))
        raw = rest[length:]
    assert not raw, f"bytes that are not an answer: {raw[:300]!r}"
    return answers


def check_answer(answer: Answer, head: bool) -> str:
    """The answer's outcome name; fails unless a 2xx or a JSON error of the one shape, never a 500."""
    if 200 <= answer.status < 300:
        return str(answer.status)
    assert answer.status in ERROR_STATUSES, answer
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    if head and not answer.head_body:
        return f"{answer.status} (HEAD)"
    payload = json.loads(answer.body)
    assert isinstance(payload, dict), answer
    assert set(payload) == {"error", "detail"}, payload
    assert isinstance(payload["error"], str)
    assert isinstance(payload["detail"], str)
    assert payload["error"]
    return f"{answer.status} {payload['error']}" + (" (HEAD, with a body)" if answer.head_body else "")


def exchange(port: int, request: bytes) -> bytes:
    """``request`` sent on a new connection; everything read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS) as sock:
        # Answered and closed before reading it all (a refused body): the answer is still there.
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # closed with unread request bytes: what was answered arrived first
            except TimeoutError as exc:
                raise AssertionError(f"no end of answer in {ANSWER_SECONDS} s: a hang") from exc
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class Failures(logging.Handler):
    """Records that tell of a server failure: ERROR and above, or any with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info is not None:
            self.records.append(f"{record.name} {record.levelname}: {record.getMessage()}")


@contextmanager
def watching_logs() -> Iterator[Failures]:
    handler = Failures()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def check_request(tally: Tally, port: int, failures: Failures, request: Request) -> None:
    raw = exchange(port, request.raw)
    answers = parse_answers(raw, request.head)
    if not answers:
        tally.add("closed unanswered")
    for number, answer in enumerate(answers):
        tally.add(check_answer(answer, request.head and not number), new_input=not number)
    assert not failures.records, failures.records[:3]


async def test_generated_requests_get_2xx_or_json_4xx_and_no_tracebacks(tmp_path: Path) -> None:
    fns = {"grayscale": FunctionSettings(module=GRAY),
           "ok": FunctionSettings(module=write_wasm(tmp_path, "ok", m_ok()))}
    http = {"token": TOKEN, "max_body_bytes": 256 * 1024, "max_pixels": 1_000_000, "body_idle_timeout": BODY_IDLE,
            "header_timeout": 5.0}
    async with daemon(tmp_path, fns, http=http) as (app, session, base):
        port = app.http_port
        assert port is not None
        # The event stream answers for as long as the client stays: it is no request/answer to read to the end
        # (tests/test_events_api.py covers it).
        paths = (*sorted(p for p in routes(app) if p != "/v1/events/stream"), *_FIXED_PATHS)
        tally = Tally("HTTP fuzz")
        with watching_logs() as failures:
            await asyncio.to_thread(explore, st.binary(min_size=1, max_size=1024).map(lambda b: build(b, paths)),
                                    lambda req: check_request(tally, port, failures, req), short=SHORT_EXAMPLES)
        print(f"\n{tally.report()}")
        assert tally.inputs >= min(SHORT_EXAMPLES, LONG_EXAMPLES or SHORT_EXAMPLES)
        assert "closed unanswered" not in tally.outcomes, tally.outcomes
        assert not any(k.startswith("5") and not k.startswith(("503", "504")) for k in tally.outcomes)
        reached = {k.split(" ")[0] for k in tally.outcomes}
        assert {"200", "400", "401", "404", "405"} <= reached, tally.outcomes
        # Still serving: health and a real call.
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(f"{base}/v1/functions/grayscale", data=encoded("PNG"), headers=auth) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_an_unread_body_that_fails_its_encoding_logs_no_traceback(tmp_path: Path, encoding: str) -> None:
    """Found by the fuzzer: aiohttp drains what the handler left unread and logged its decode error at ERROR."""
    async with daemon(tmp_path, http={"token": TOKEN}) as (app, _session, _base):
        assert app.http_port is not None
        with watching_logs() as failures:
            for target, status in (("/healthz", 200), ("/readyz", 200), ("/nope", 401)):
                request = (f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: {encoding}"
                           "\r\nContent-Length: 9\r\n\r\nnot gzip!").encode()
                raw = await asyncio.to_thread(exchange, app.http_port, request)
                (answer,) = parse_answers(raw, head=False)
                assert answer.status == status, answer
                check_answer(answer, head=False)
        assert not failures.records, failures.records


def test_the_log_exception_check_refuses_another_signature() -> None:
    class Renamed:
        def log_exception(self, message: str) -> None: ...

    assert listener._log_exception_fits(web.RequestHandler)  # noqa: SLF001 (the import-time check itself)
    assert not listener._log_exception_fits(Renamed)  # noqa: SLF001
    assert not listener._log_exception_fits(object)  # noqa: SLF001
