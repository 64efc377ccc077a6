"""``edged.http_request``: outbound HTTP for functions, limited to their ``allowed_hosts`` (docs/ABI.md).

The guest names a URL; the host decides where the connection goes. The origin (scheme, host, port with
the default made explicit) must equal an allowlist entry, the ``Host`` header is always the one
http.client derives from that origin, hop-by-hop and proxy headers are refused, redirects are never
followed (http.client does not follow them), and proxy environment variables are never consulted
(http.client ignores them). The whole exchange, name lookup included, is bounded by the call's remaining
time, because epoch interruption cannot stop host code.

The looked-up addresses are screened before the connect (``edged.wasm.host.addresses``): a loopback,
link-local, private or unspecified address is only reached for an origin in ``private_hosts``, so a name
that starts resolving to this device or its LAN (DNS rebinding) reaches neither.

Refusals and failures are logged at WARNING once per call (the rest at DEBUG), so a guest looping over
refused requests cannot flood the log; ``HttpCall.refused`` (in the call's ``extensions[EXTENSION]``)
counts them all.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import wasmtime

from edged.wasm.abi import Errno
from edged.wasm.host.addresses import non_public
from edged.wasm.host.connect import AddrInfo, open_connection, remaining, resolve, ssl_context
from edged.wasm.host.context import CallContext, current, escape_text
from edged.wasm.host.guard import Errnos, Refused, host_function
from edged.wasm.host.urls import split_url
from edged.wasm.memory import u32

__all__ = ["EXTENSION", "HttpCall", "HttpRequest", "edged_http_request", "parse_request", "screen"]

log = logging.getLogger(__name__)

#: A failure is the negated errno (a response is its status, 100-599).
INVALID_ARGUMENT = -Errno.INVALID_ARGUMENT
DENIED = -Errno.DENIED
IO_ERROR = -Errno.IO_ERROR
TOO_LARGE = -Errno.TOO_LARGE
_ERRNOS = Errnos(invalid_argument=INVALID_ARGUMENT, unexpected=IO_ERROR)
#: Key of the per-call state in ``CallContext.extensions``.
EXTENSION = "edged.http"

#: Longest request text (request line and headers) a guest may send.
MAX_REQUEST_TEXT = 64 * 1024
_CHUNK = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REFUSED = frozenset({"host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                      "content-length"})
# Header values are printable ASCII or tab: http.client would send other text as Latin-1, or raise.
_BAD_VALUE = re.compile(r"[^\x09\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    scheme: str
    host: str
    port: int
    origin: str
    target: str
    headers: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class HttpCall:
    """One call's refused or failed requests: the first is logged at WARNING, the rest at DEBUG."""

    refused: int = 0


def _complain(ctx: CallContext, message: str, *args: object) -> None:
    state = ctx.extensions.setdefault(EXTENSION, HttpCall())
    assert isinstance(state, HttpCall)
    state.refused += 1
    level = logging.WARNING if state.refused == 1 else logging.DEBUG
    ctx.logger.log(level, message, *args)


def parse_request(text: str, allowed: tuple[str, ...]) -> HttpRequest:
    """Parse ``METHOD URL`` plus ``Name: value`` lines; raise Refused (-1 malformed, -2 not allowed)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise Refused(INVALID_ARGUMENT, "empty request")
    first = lines[0].removesuffix("\r").split(" ")
    if len(first) != 2 or not _TOKEN.match(first[0]):
        raise Refused(INVALID_ARGUMENT, "the first line must be 'METHOD URL'")
    method, url = first
    try:
        parts = split_url(url)
    except ValueError as exc:
        raise Refused(INVALID_ARGUMENT, f"bad URL: {escape_text(str(exc))}") from exc
    if parts.origin not in allowed:
        raise Refused(DENIED, f"{parts.origin} is not in allowed_hosts")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.removesuffix("\r").partition(":")
        if not sep or not _TOKEN.match(name):
            raise Refused(INVALID_ARGUMENT, f"malformed header line {escape_text(line[:80])!r}")
        lower = name.lower()
        if lower in _REFUSED or lower.startswith("proxy-"):
            raise Refused(INVALID_ARGUMENT, f"header {name} is refused")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise Refused(INVALID_ARGUMENT, f"header {name}: a value is printable ASCII")
        headers.append((name, value))
    return HttpRequest(method, parts.scheme, parts.host, parts.port, parts.origin, parts.target, tuple(headers))


def screen(req: HttpRequest, addresses: Sequence[AddrInfo], private: bool) -> list[AddrInfo]:
    """The addresses the request may connect to; Refused (-2) when the origin may reach none of them."""
    if private:
        return list(addresses)
    kept = [info for info in addresses if non_public(info[4]) is None]
    if not kept:
        found = ", ".join(f"{info[4][0]} ({non_public(info[4])})" for info in addresses[:4])
        raise Refused(DENIED, f"{req.origin} resolved to {found or 'nothing'}; only an origin also listed "
                              f"in private_hosts may reach such addresses")
    return kept


def _exchange(ctx: CallContext, req: HttpRequest, body: bytes, cap: int,
              private: bool) -> tuple[int, bytearray, int]:
    """Send the request; return (status, the body's first ``cap`` bytes, the body's full length)."""
    addresses = screen(req, resolve(ctx, req.host, req.port), private)
    conn: http.client.HTTPConnection
    if req.scheme == "https":
        conn = http.client.HTTPSConnection(req.host, req.port, timeout=remaining(ctx), context=ssl_context())
    else:
        conn = http.client.HTTPConnection(req.host, req.port, timeout=remaining(ctx))
    watchdog: threading.Timer | None = None
    try:
        sock = open_connection(conn, req.scheme, req.host, addresses)
        # Socket timeouts bound each recv, not the exchange: a server dripping bytes could outlast the
        # call. At the deadline the watchdog shuts the socket down, which ends any pending recv.
        watchdog = threading.Timer(remaining(ctx), _shutdown, (sock,))
        watchdog.daemon = True
        watchdog.start()
        names = {name.lower() for name, _ in req.headers}
        conn.putrequest(req.method, req.target, skip_accept_encoding="accept-encoding" in names)
        for name, value in req.headers:
            conn.putheader(name, value)
        if body or req.method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        kept = bytearray()
        total = 0
        while chunk := resp.read1(_CHUNK):
            remaining(ctx)
            total += len(chunk)
            # Past the guest's buffer the rest is only counted, so the guest learns the size it needs.
            room = cap - len(kept)
            if room > 0:
                kept += chunk[:room]
        remaining(ctx)
        return resp.status, kept, total
    except RuntimeError as exc:  # the watchdog's thread could not start (TasksMax)
        raise OSError(f"cannot bound the exchange: {exc}") from exc
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()


def _shutdown(sock: socket.socket) -> None:
    # The plain socket method: SSLSocket.shutdown would also drop TLS state under the reading thread.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@host_function("edged.http_request", _ERRNOS)
def edged_http_request(caller: wasmtime.Caller, req_ptr: int, req_len: int, body_ptr: int, body_len: int,
                       resp_ptr: int, resp_cap: int, resp_len_ptr: int) -> int:
    ctx = current()
    if ctx is None or not ctx.settings.allowed_hosts:
        return DENIED
    memory = ctx.guest_memory(caller)
    if memory is None:
        return INVALID_ARGUMENT
    req_len, body_len, resp_cap = u32(req_len), u32(body_len), u32(resp_cap)
    resp_ptr, resp_len_ptr = u32(resp_ptr), u32(resp_len_ptr)
    if req_len > MAX_REQUEST_TEXT:
        return INVALID_ARGUMENT
    # Pointers outside the memory: the guard answers invalid_argument.
    body = memory.read(u32(body_ptr), body_len)
    memory.check(resp_ptr, resp_cap)
    memory.check(resp_len_ptr, 4)
    try:
        text = memory.read(u32(req_ptr), req_len).decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_ARGUMENT
    try:
        req = parse_request(text, ctx.settings.allowed_hosts)
    except Refused as exc:
        _complain(ctx, "http_request refused (%d): %s", exc.errno, exc.detail)
        return exc.errno
    started = time.perf_counter()
    try:
        status, data, total = _exchange(ctx, req, body, resp_cap, req.origin in ctx.settings.private_hosts)
    except Refused as exc:
        _complain(ctx, "http_request refused (%d): %s", exc.errno, exc.detail)
        return exc.errno
    except (OSError, http.client.HTTPException) as exc:
        _complain(ctx, "http_request %s %s%s failed: %s", req.method, req.origin, req.target, exc)
        return IO_ERROR
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.debug("%s: %s %s%s -> %d, %d bytes in %.1f ms", ctx.function, req.method, req.origin, req.target,
              status, total, elapsed_ms)
    if not 100 <= status <= 599:
        return IO_ERROR
    # Both were checked above; the guest has not run since, so its memory has neither grown nor moved.
    memory.write_u32(resp_len_ptr, total)
    if total > resp_cap:
        return TOO_LARGE
    memory.write(resp_ptr, data)
    return status
