"""The HTTP listener: aiohttp's protocol behind a guard that bounds connections and the time to send headers.

aiohttp reads request headers with no deadline (before 3.14 not even for a connection that never sends
a request) and accepts every connection until the process runs out of file descriptors. The guard wraps
aiohttp's public protocol factory (``web.Server``, from ``AppRunner.server``) in one of its own, passed
to ``loop.create_server``:

- ``max_connections``: a connection is counted from ``connection_made`` to ``connection_lost``. Past the
  limit, it gets a fixed 503 JSON answer with Retry-After and is half-closed, then dropped on the peer's
  FIN or after ``REFUSAL_LINGER`` (so the peer reads the answer, not a reset). Refusals in progress are
  bounded too; past that bound a connection is reset at once. Nothing on this path waits.
- ``header_timeout``: a timer armed at connect and again when a request's handler returns; the
  middleware disarms it when a request reaches the app, which aiohttp does once the headers are complete.
  When it fires with no request in progress and no response left to flush, the connection is closed.

Requests aiohttp's parser rejects (a bad request line, an oversized header, undecodable framing) never
reach the app; aiohttp answers them from ``RequestHandler.handle_error`` in text/plain and logs each with
a traceback at ERROR. ``JsonErrorHandler`` overrides that method to answer in edged's JSON error shape and
log at DEBUG, and ``log_exception`` to log at DEBUG a body the handler left unread that fails to decode when
aiohttp drains it. The overrides are checked once at import (``JSON_PARSE_ERRORS``); when aiohttp's methods do
not look as expected, connections get aiohttp's own handler from ``web.Server`` instead, as a whole.
Everything else is public: ``web.Server`` as a protocol factory, ``request.transport``, middlewares.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import resource
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web

from edged.metrics import Metrics
from edged.settings import HttpSettings

__all__ = ["HANDLER_OPTIONS", "JSON_PARSE_ERRORS", "REFUSAL_LINGER", "ConnectionGuard", "JsonErrorHandler",
           "ensure_fd_limit"]

log = logging.getLogger(__name__)

#: Seconds a refused connection may stay half-closed for its peer to read the 503.
REFUSAL_LINGER = 2.0
#: Descriptors kept for everything else the daemon opens (store, modules, models, scratch files, MQTT).
FD_RESERVE = 256
_RETRY_AFTER = 1
_REFUSAL_BODY = json.dumps({"error": "overloaded", "detail": "too many open connections"}).encode()
_REFUSAL = (
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    f"Content-Length: {len(_REFUSAL_BODY)}\r\nRetry-After: {_RETRY_AFTER}\r\nConnection: close\r\n\r\n"
).encode() + _REFUSAL_BODY
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Options of aiohttp's per-connection handler: given to the AppRunner and to JsonErrorHandler alike.
HANDLER_OPTIONS: dict[str, Any] = {"access_log": None}


def _handle_error_fits(cls: type) -> bool:
    """Whether ``cls.handle_error`` is the method JsonErrorHandler overrides: (request, status, exc, message)."""
    method = getattr(cls, "handle_error", None)
    if method is None:
        return False
    try:
        params = list(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return params == ["self", "request", "status", "exc", "message"]


def _log_exception_fits(cls: type) -> bool:
    """Whether ``cls.log_exception`` takes what JsonErrorHandler's override passes on: (*args, **kw)."""
    try:
        method = getattr(cls, "log_exception", None)
        if method is None:
            return False
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return [p.kind for p in params] == [inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL,
                                        inspect.Parameter.VAR_KEYWORD]


#: Checked once: answer parse errors in JSON (True) or leave them to aiohttp (False).
JSON_PARSE_ERRORS = _handle_error_fits(web.RequestHandler) and _log_exception_fits(web.RequestHandler)


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering requests its parser rejects in the one JSON error shape."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)  # a real failure: aiohttp logs it
        # A client's malformed request is its own problem, and cheap to send by the thousand: no traceback.
        log.debug("refused a malformed request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        detail = (message or HTTPStatus(status).phrase).strip().split("\n", 1)[0][:200]
        code = "too_large" if status == 413 else HTTPStatus(status).phrase.lower().replace(" ", "_")
        response = web.json_response({"error": code, "detail": detail}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After a handler that left the body unread (a 401, a 404, GET /healthz), aiohttp reads and drops
        # the rest; a body that fails its Content-Encoding or chunked framing then raised a traceback at
        # ERROR per request (found by tests/test_fuzz_http.py). The answer is sent already: the client's
        # problem, as a malformed request is.
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            log.debug("dropped the unread rest of a request body that could not be read: %s", exc)
            return
        super().log_exception(*args, **kw)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler behind the header timer, or a refusal."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.busy = 0  # requests whose handler is running

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._inner = self._guard.admit(self)
        if self._inner is None:
            self._refuse()
            return
        self.arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)  # a refused connection's request is read and dropped

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self._guard.forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def arm(self) -> None:
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(self._guard.header_timeout, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self.transport
        if self.busy or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            self.arm()  # a response is still flushing to a slow reader: its headers are not late
            return
        self._guard.timed_out(self)
        transport.close()

    def _refuse(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return  # reset at once by the guard
        self.transport.write(_REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, self.transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class ConnectionGuard:
    """Counts and bounds the listener's connections; its middleware marks when requests run."""

    def __init__(self, settings: HttpSettings, metrics: Metrics) -> None:
        self.header_timeout = settings.header_timeout
        self.max_connections = settings.max_connections
        self._metrics = metrics
        self._server: web.Server | None = None
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._refusing: set[_Connection] = set()

    @property
    def open(self) -> int:
        """Connections being served (refusals not counted)."""
        return len(self._open)

    async def listen(self, server: web.Server, host: str, port: int, *, backlog: int = 128) -> asyncio.Server:
        """Start accepting on ``host:port``, each connection served by ``server`` behind this guard."""
        self._server = server
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Connection(self), host, port, backlog=backlog,
                                        reuse_address=True)

    def admit(self, conn: _Connection) -> asyncio.Protocol | None:
        """aiohttp's protocol for ``conn``, or None when it is to be refused."""
        assert conn.transport is not None
        assert self._server is not None
        if len(self._open) >= self.max_connections:
            self._metrics.http_refused.inc()
            if len(self._refusing) >= self.max_connections:
                conn.transport.abort()  # a flood of refusals: bound the descriptors they hold too
            else:
                self._refusing.add(conn)
            return None
        self._open[conn.transport] = conn
        self._metrics.http_connections.set(len(self._open))
        if JSON_PARSE_ERRORS:
            return JsonErrorHandler(self._server, loop=asyncio.get_running_loop(), **HANDLER_OPTIONS)
        return self._server()

    def forget(self, conn: _Connection) -> None:
        self._refusing.discard(conn)
        if conn.transport is not None and self._open.pop(conn.transport, None) is not None:
            self._metrics.http_connections.set(len(self._open))

    def timed_out(self, conn: _Connection) -> None:
        self._metrics.http_timeouts.labels("header").inc()
        log.debug("closing a connection that sent no complete request headers in %s s", self.header_timeout)

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Outermost middleware: the request's headers are in, so its connection's header timer stops."""
        conn = self._open.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.busy += 1
        conn.disarm()
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            if not conn.busy:
                conn.arm()

    def close(self) -> None:
        """Stop every timer and drop the refusals still lingering (after the runner's cleanup)."""
        for conn in list(self._open.values()):
            conn.disarm()
        for conn in list(self._refusing):
            conn.disarm()
            conn.abort()


def ensure_fd_limit(settings: HttpSettings) -> None:
    """Raise the soft descriptor limit toward what ``max_connections`` needs; warn when the hard one is short."""
    # Served connections, refusals lingering, and the rest of the daemon.
    needed = 2 * settings.max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("descriptor limit %d is under %d, what http.max_connections = %d needs; raise LimitNOFILE "
                    "or lower max_connections", soft, needed, settings.max_connections)
