"""``edged.http_request``: outbound HTTP for functions, limited to their ``allowed_hosts`` (docs/ABI.md).

The guest names a URL; the host decides where the connection goes. The origin (scheme, host, port with
the default made explicit) must equal an allowlist entry, the ``Host`` header is always the one
http.client derives from that origin, hop-by-hop and proxy headers are refused, redirects are never
followed (http.client does not follow them), and proxy environment variables are never consulted
(http.client ignores them). The whole exchange, name lookup included, is bounded by the call's remaining
time, because epoch interruption cannot stop host code.

Where the connection goes is set through ``HTTPConnection._create_connection``, http.client's private
hook (``PINNED_BY_HOOK`` says it is there, checked once at import). Without it the socket is connected
here and handed to http.client as ``conn.sock`` (wrapped in TLS for https), which does the same with
public names only.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import wasmtime

from edged.wasm.abi import Errno
from edged.wasm.host.context import CallContext, current, escape_text
from edged.wasm.host.guard import Errnos, Refused, host_function
from edged.wasm.host.urls import normalize_origin
from edged.wasm.memory import GuestMemory, u32

__all__ = ["PINNED_BY_HOOK", "HttpRequest", "edged_http_request", "parse_request"]

log = logging.getLogger(__name__)

#: A failure is the negated errno (a response is its status, 100-599).
INVALID_ARGUMENT = -Errno.INVALID_ARGUMENT
DENIED = -Errno.DENIED
IO_ERROR = -Errno.IO_ERROR
TOO_LARGE = -Errno.TOO_LARGE
_ERRNOS = Errnos(invalid_argument=INVALID_ARGUMENT, unexpected=IO_ERROR)


def _has_connection_hook() -> bool:
    """Whether http.client still connects through the per-connection ``_create_connection`` attribute."""
    connect = http.client.HTTPConnection.connect
    return ("_create_connection" in getattr(getattr(connect, "__code__", None), "co_names", ())
            and callable(getattr(http.client.HTTPConnection("localhost"), "_create_connection", None)))


PINNED_BY_HOOK = _has_connection_hook()

#: Longest request text (request line and headers) a guest may send.
MAX_REQUEST_TEXT = 64 * 1024
_CHUNK = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REFUSED = frozenset({"host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                      "content-length"})
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SSL_CONTEXT: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    scheme: str
    host: str
    port: int
    origin: str
    target: str
    headers: tuple[tuple[str, str], ...]


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
    if _BAD_VALUE.search(url) or " " in url:
        raise Refused(INVALID_ARGUMENT, "control characters in the URL")
    try:
        origin = normalize_origin(url)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Refused(INVALID_ARGUMENT, f"bad URL: {exc}") from exc
    if origin not in allowed:
        raise Refused(DENIED, f"{origin} is not in allowed_hosts")
    assert parts.hostname is not None  # normalize_origin refuses URLs without a host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
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
            raise Refused(INVALID_ARGUMENT, f"control characters in header {name}")
        headers.append((name, value))
    return HttpRequest(method, parts.scheme, parts.hostname, port, origin, target, tuple(headers))


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


def _remaining(ctx: CallContext) -> float:
    left = ctx.remaining()
    if left <= 0:
        raise TimeoutError("the call's time is up")
    return left


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _resolve(ctx: CallContext, host: str, port: int) -> Sequence[_AddrInfo]:
    """getaddrinfo within the call's remaining time.

    The resolver takes no timeout (resolv.conf's can add up to tens of seconds), so a name is looked up
    on a daemon thread: when the call's time is up the call goes on, and the thread ends whenever the
    resolver does. An IP literal needs no lookup.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    done = threading.Event()
    outcome: list[Sequence[_AddrInfo] | OSError] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="edged-dns", daemon=True).start()
    if not done.wait(_remaining(ctx)):
        raise TimeoutError(f"looking up {host} outlasted the call")
    if isinstance(outcome[0], OSError):
        raise outcome[0]
    return outcome[0]


def _connect_to(addresses: Sequence[_AddrInfo]) -> Callable[..., socket.socket]:
    """socket.create_connection's signature, connecting to ``addresses`` whatever the name asked for."""
    def create_connection(_address: object, timeout: float | None = None,
                          _source_address: object = None) -> socket.socket:
        failure: OSError = OSError("the name has no address")
        for family, kind, proto, _name, sockaddr in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            return sock
        raise failure
    return create_connection


def _open(conn: http.client.HTTPConnection, req: HttpRequest, addresses: Sequence[_AddrInfo]) -> socket.socket:
    """Connect ``conn`` to ``addresses`` while the Host header and TLS (SNI, certificate name) keep the name."""
    connect = _connect_to(addresses)
    if PINNED_BY_HOOK:
        conn._create_connection = connect  # type: ignore[attr-defined]  # noqa: SLF001 (see the module docstring)
        conn.connect()
        sock: socket.socket = conn.sock
        return sock
    sock = connect(None, conn.timeout)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as HTTPConnection.connect does
        if req.scheme == "https":
            sock = _ssl_context().wrap_socket(sock, server_hostname=req.host)
    except BaseException:
        sock.close()
        raise
    conn.sock = sock
    return sock


def _exchange(ctx: CallContext, req: HttpRequest, body: bytes, cap: int) -> tuple[int, bytearray, int]:
    """Send the request; return (status, the body's first ``cap`` bytes, the body's full length)."""
    addresses = _resolve(ctx, req.host, req.port)
    conn: http.client.HTTPConnection
    if req.scheme == "https":
        conn = http.client.HTTPSConnection(req.host, req.port, timeout=_remaining(ctx), context=_ssl_context())
    else:
        conn = http.client.HTTPConnection(req.host, req.port, timeout=_remaining(ctx))
    watchdog: threading.Timer | None = None
    try:
        sock = _open(conn, req, addresses)
        # Socket timeouts bound each recv, not the exchange: a server dripping bytes could outlast the
        # call. At the deadline the watchdog shuts the socket down, which ends any pending recv.
        watchdog = threading.Timer(_remaining(ctx), _shutdown, (sock,))
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
            _remaining(ctx)
            total += len(chunk)
            # Past the guest's buffer the rest is only counted, so the guest learns the size it needs.
            room = cap - len(kept)
            if room > 0:
                kept += chunk[:room]
        _remaining(ctx)
        return resp.status, kept, total
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
    memory = GuestMemory.of_caller(caller)
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
        ctx.logger.warning("http_request refused (%d): %s", exc.errno, exc.detail)
        return exc.errno
    started = time.perf_counter()
    try:
        status, data, total = _exchange(ctx, req, body, resp_cap)
    except (OSError, http.client.HTTPException) as exc:
        ctx.logger.warning("http_request %s %s%s failed: %s", req.method, req.origin, req.target, exc)
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
