"""The local HTTP API (aiohttp): run functions on posted images, describe them, health and metrics."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edged.errors import BadRequest, BodyTimeout, BodyTooLarge, EdgedError, OutboxFull, Overloaded, UnknownFunction
from edged.ingest.body import body_bound, read_body
from edged.ingest.deploy import add_deploy_routes
from edged.ingest.events_api import EventSource, add_event_routes
from edged.ingest.openapi import OPENAPI_PATH, openapi_route
from edged.ingest.routes import MAX_CAMERA_CHARS
from edged.ingest.web import add_dashboard, is_open_path
from edged.metrics import Metrics
from edged.pipeline import IngestPolicy, Pipeline
from edged.secrets import resolve_secret
from edged.settings import OutboxSettings, Settings
from edged.status import Components
from edged.store import OutboxState
from edged.sync.status import SyncStatus
from edged.wasm.pool import FunctionPool

if TYPE_CHECKING:  # imported only where deploy is enabled (edged.app)
    from edged.deploy import Deployer

__all__ = ["LEGACY_API_NAMES", "BodyReservation", "HttpApi", "camera_of", "outbox_document"]

log = logging.getLogger(__name__)

#: The original demo's `api` header values on POST /api/image.
LEGACY_API_NAMES = {"rs": "grayscale", "go": "classify"}
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_BODY_HEADERS = frozenset({"content-type", "content-length"})
#: Characters a camera id may not hold: it becomes an MQTT topic level of the results.
_TOPIC_SPECIALS = frozenset("/+#")
#: Holds a request body's bytes against the memory budget while the request is served; raises an
#: EdgedError (a 503 Overloaded, or too_large) when they cannot be had.
BodyReservation = Callable[[int], AbstractContextManager[object]]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OutboxControl(Protocol):
    """What the outbox routes need from the store (edged.store.Store)."""

    async def outbox_state(self) -> OutboxState: ...
    async def retry_dead(self) -> int: ...
    @property
    def full(self) -> bool: ...


def outbox_document(state: OutboxState, outbox: OutboxSettings, sync: SyncStatus | None) -> dict[str, Any]:
    """GET /v1/outbox: the store's counts, the outbox bounds and how the cloud sync last went.

    ``bytes_per_result`` is measured (database pages in use / results held); ``hours_left`` is how long
    the room left under max_bytes lasts at the recent commit rate (None while nothing is committed).
    """
    sync = sync if sync is not None else SyncStatus()
    per_result = round(state.disk_bytes / state.events) if state.events else None
    room = max(0, outbox.max_bytes - state.store_bytes)
    hours_left = (round(room / (per_result * state.rate_per_s) / 3600, 1)
                  if per_result and state.rate_per_s > 0 else None)
    return {
        "depth": state.depth,
        "bytes": state.bytes,
        "store_bytes": state.store_bytes,
        "max_bytes": outbox.max_bytes,
        "max_age_s": outbox.max_age,
        "on_full": outbox.on_full,
        "oldest_age_s": state.oldest_age_s,
        "dead": state.dead,
        "dead_letters": [{"id": d.id, "camera": d.camera, "function": d.function, "reason": d.reason,
                          "attempts": d.attempts, "created_at": d.created_at} for d in state.dead_letters],
        "evicted_total": state.evicted_total,
        "evicted": state.evicted,
        "last_sync_at": sync.last_sync_at,
        "last_error": sync.last_error,
        "last_error_at": sync.last_error_at,
        "results": state.events,
        "disk_bytes": state.disk_bytes,
        "bytes_per_result": per_result,
        "results_per_s": round(state.rate_per_s, 3),
        "hours_left": hours_left,
        "quarantined": state.quarantined,
    }


def camera_of(request: web.BaseRequest) -> str:
    """The request's camera id (``X-Camera``, default ``http``); BadRequest unless printable ASCII, 1-128 long."""
    value = request.headers.get("X-Camera")
    if value is None:
        return "http"
    camera = value.strip()
    if (not camera or len(camera) > MAX_CAMERA_CHARS or not camera.isascii() or not camera.isprintable()
            or not _TOPIC_SPECIALS.isdisjoint(camera)):
        raise BadRequest(f"X-Camera must be 1 to {MAX_CAMERA_CHARS} printable ASCII characters, "
                         "none of '/', '+' or '#'")
    return camera


def _no_reservation(size: int) -> AbstractContextManager[object]:
    return nullcontext()


def _error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


class HttpApi:
    """Routes and middlewares of the HTTP API; ``application()`` builds the aiohttp app."""

    def __init__(self, settings: Settings, pool: FunctionPool, metrics: Metrics, components: Components,
                 pipeline: Pipeline, outbox: OutboxControl | None = None, sync: SyncStatus | None = None,
                 reserve_body: BodyReservation | None = None, deployer: Deployer | None = None,
                 events: EventSource | None = None) -> None:
        self._settings = settings
        self._pool = pool
        self._metrics = metrics
        self._components = components
        self._pipeline = pipeline
        self._policy = IngestPolicy.for_http(settings.http)
        self._outbox = outbox
        self._sync = sync
        self._reserve_body = reserve_body or _no_reservation
        self._deployer = deployer
        self._events = events
        token = resolve_secret("http.token_file", settings.http.token, settings.http.token_file)
        self._token = token.encode() if token is not None else None
        self.accepting = True

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=self._settings.http.max_body_bytes,
            middlewares=[self._errors, self._auth],
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._prometheus)
        app.router.add_get("/v1/functions", self._list_functions)
        app.router.add_post("/v1/functions/{name}", self._call_function)
        app.router.add_post("/api/image", self._legacy_image)
        app.router.add_get(OPENAPI_PATH, openapi_route(outbox=self._outbox is not None, legacy=LEGACY_API_NAMES,
                                                       deploy=self._deployer is not None,
                                                       events=self._events is not None))
        if self._outbox is not None:
            app.router.add_get("/v1/outbox", self._outbox_status)
            app.router.add_post("/v1/outbox/dead/retry", self._retry_dead)
        if self._deployer is not None:
            add_deploy_routes(app, self._deployer, self._settings, self._reserve_body)
        if self._events is not None:
            add_event_routes(app, self._events)
        add_dashboard(app.router)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgedError as exc:
            headers = ({"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded | OutboxFull)
                       else None)
            return _error_response(exc.http_status, exc.code, exc.detail, headers)
        except web.HTTPRequestEntityTooLarge:
            self._metrics.rejected.labels("http", "too_large").inc()
            limit = self._settings.http.max_body_bytes
            return _error_response(413, "too_large", f"request body over {limit} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.lower().replace(" ", "_")
            # Its own Content-Type would clash with json_response's; Allow and the like are kept.
            headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
            return _error_response(exc.status, code, exc.text or exc.reason, headers)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _error_response(500, "internal", "internal error; see the daemon log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self._token is not None and request.path not in _OPEN_PATHS and not is_open_path(request.path):
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            # Header bytes that are not UTF-8 arrive as lone surrogates: compare them as the bytes sent.
            sent = value.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent, self._token):
                self._metrics.rejected.labels("http", "unauthorized").inc()
                return _error_response(401, "unauthorized", "missing or wrong bearer token",
                                       {"WWW-Authenticate": 'Bearer realm="edged"'})
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        # Not ready when new work would certainly be refused: shutting down, or the outbox full with
        # on_full = reject_new (every result would be a 503 outbox_full).
        refusing = ("shutting_down" if not self.accepting else
                    "outbox_full" if self._outbox is not None and self._outbox.full else None)
        body: dict[str, Any] = {
            "ready": refusing is None,
            "device_id": self._settings.device_id,
            "components": self._components.snapshot(),
        }
        if refusing is not None:
            body["reason"] = refusing
        return web.json_response(body, status=200 if refusing is None else 503)

    async def _prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _outbox_status(self, request: web.Request) -> web.Response:
        assert self._outbox is not None
        state = await self._outbox.outbox_state()
        return web.json_response(outbox_document(state, self._settings.outbox, self._sync))

    async def _retry_dead(self, request: web.Request) -> web.Response:
        assert self._outbox is not None
        return web.json_response({"requeued": await self._outbox.retry_dead()})

    async def _list_functions(self, request: web.Request) -> web.Response:
        return web.json_response({"functions": self._pool.describe()})

    async def _call_function(self, request: web.Request) -> web.Response:
        return await self._run(request, request.match_info["name"])

    async def _legacy_image(self, request: web.Request) -> web.Response:
        api = request.headers.get("api", "").strip()
        if not api:
            self._metrics.rejected.labels("http", "bad_request").inc()
            return _error_response(400, "bad_request", "header 'api' names the function (rs, go or a name)")
        return await self._run(request, LEGACY_API_NAMES.get(api, api))

    async def _run(self, request: web.Request, name: str) -> web.Response:
        if not self.accepting:
            raise Overloaded("shutting down")
        if not self._pool.has(name):
            self._metrics.rejected.labels("http", UnknownFunction.code).inc()
            raise UnknownFunction(f"no function named {name!r}")
        try:
            camera = camera_of(request)
            bound = body_bound(request, self._settings.http.max_body_bytes)
        except (BadRequest, BodyTooLarge) as exc:
            self._metrics.rejected.labels("http", exc.code).inc()
            raise
        with self._reserve_body(bound):  # the memory budget, held until the response is built
            data = await self._read(request)
            return await self._respond(name, camera, data)

    async def _read(self, request: web.Request) -> bytes:
        http = self._settings.http
        try:
            return await read_body(request, limit=http.max_body_bytes, idle_timeout=http.body_idle_timeout)
        except BodyTimeout:
            self._metrics.http_timeouts.labels("body").inc()
            raise
        except (BadRequest, BodyTooLarge) as exc:
            self._metrics.rejected.labels("http", exc.code).inc()
            raise

    async def _respond(self, name: str, camera: str, data: bytes) -> web.Response:
        started = time.perf_counter()
        try:
            outcome = await self._pipeline.process(policy=self._policy, camera=camera, data=data,
                                                   functions=[name])
        except Overloaded:
            self._metrics.overloaded.labels("http").inc()
            raise
        if outcome.ingest_error is not None:
            raise outcome.ingest_error
        result = outcome.results[name]
        if isinstance(result, EdgedError):
            raise result
        event_id = outcome.events[0].id if outcome.events else None
        headers = {
            "X-Edged-Function": name,
            "X-Edged-Duration-Ms": f"{result.duration_ms:.3f}",
            "X-Edged-Total-Ms": f"{(time.perf_counter() - started) * 1000:.3f}",
        }
        if event_id is not None:
            headers["X-Edged-Event-Id"] = event_id
        if result.json is not None:
            return web.Response(body=json.dumps(result.json).encode(), content_type="application/json",
                                headers=headers)
        return web.Response(body=result.body, headers={**headers, "Content-Type": result.content_type})
