"""A Dapr sidecar emulator for the tests (daprd cannot be installed here).

An aiohttp app on a free loopback port, run on its own event loop in its own thread, so tests that block
(subprocess daemons, sync waits) never stall it. It implements the sidecar endpoints edged uses, as the
Dapr API reference documents them:

- ``GET /v1.0/healthz/outbound``: 204 once "components are ready"; exempt from the API token.
- ``POST /v1.0/publish/{pubsub}/{topic}``: 204 delivered; 404 pub/sub not found; 400 malformed
  CloudEvent; 403 forbidden; 500 publish failed. ``application/cloudevents+json`` bodies are taken as
  they are; other content types are wrapped in a CloudEvent as daprd does.
- ``POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}``: a JSON array of ``{entryId, event, contentType,
  metadata}``; 204 all delivered; 400 pub/sub missing or a malformed request/entry; 403; 500 with
  ``{"failedEntries": [{"entryId", "error"}], "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"}``.
- ``dapr-api-token``: when a token is configured, a missing or wrong header gets 401
  ``{"errorCode": "ERR_API_UNAUTHORIZED", ...}`` on every API but the health endpoints.

Errors use Dapr's JSON shape ``{"errorCode", "message"}``. Switches: ``go_offline()``/``go_online()``
(the port is closed, keep-alive connections too), ``failing`` (500 on publish), ``delay`` (slow),
``hold()``/``release()`` (publishes wait), ``token``, ``forbidden`` (403), ``reject`` (event id ->
status, e.g. 400) and ``fail_ids`` (event ids the "broker" refuses: 500 / bulk per-entry failures).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from tests import waiting

__all__ = ["DaprEmulator", "Published"]

_T = TypeVar("_T")
CLOUDEVENT = "application/cloudevents+json"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUIRED = ("specversion", "id", "source", "type")


@dataclass(frozen=True)
class Published:
    """One event the emulated broker accepted."""

    via: str  # "single" or "bulk"
    pubsub: str
    topic: str
    content_type: str
    event: dict[str, Any]
    metadata: dict[str, str]

    @property
    def id(self) -> str:
        return str(self.event.get("id"))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errorCode": code, "message": message}, status=status)


class DaprEmulator:
    """``with DaprEmulator(token=...) as dapr:`` starts it on 127.0.0.1 and a free port."""

    def __init__(self, *, token: str | None = None, pubsubs: Iterable[str] = ("cloud",),
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.token = token
        self.pubsubs = set(pubsubs)
        self.failing = False
        self.forbidden = False
        self.delay = 0.0
        self.reject: dict[str, int] = {}
        self.fail_ids: set[str] = set()
        self._lock = threading.Lock()
        self._published: list[Published] = []
        self._requests: list[tuple[str, str, int]] = []
        self._inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._gate: asyncio.Event | None = None

    # -- lifecycle (called from the test's thread) -----------------------------------------------------

    def __enter__(self) -> DaprEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="dapr-emulator", daemon=True)
        self._thread.start()
        self._call(self._make_gate())
        self._call(self._serve())

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self.release()
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
        self._thread = None

    def go_offline(self) -> None:
        """Close the port (and every open connection): clients get connection refused."""
        self._call(self._close())

    def go_online(self) -> None:
        """Listen again on the same port."""
        if self._runner is None:
            self._call(self._serve())

    def hold(self) -> None:
        """Make publish requests wait (after they are counted in ``inflight``) until release()."""
        self._call(self._set_gate(False))

    def release(self) -> None:
        self._call(self._set_gate(True))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def online(self) -> bool:
        return self._runner is not None

    # -- what it saw --------------------------------------------------------------------------------------

    @property
    def published(self) -> list[Published]:
        with self._lock:
            return list(self._published)

    def ids(self) -> list[str]:
        return [p.id for p in self.published]

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every answered request."""
        with self._lock:
            return list(self._requests)

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def clear(self) -> None:
        with self._lock:
            self._published.clear()
            self._requests.clear()

    def wait(self, predicate: Callable[[DaprEmulator], bool], timeout: float = 30.0, what: str = "") -> None:
        """``wait_until`` on this emulator's state, from a plain thread."""
        waiting.wait_until(lambda: predicate(self), timeout, what or repr(predicate), interval=0.01)

    async def until(self, predicate: Callable[[DaprEmulator], bool], limit: float = 30.0, what: str = "") -> None:
        """``until`` on this emulator's state, from a coroutine (the caller's loop keeps running)."""
        await waiting.until(lambda: predicate(self), limit, what or repr(predicate))

    # -- internals (run on the emulator's loop) ------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None, "emulator not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=15)

    async def _make_gate(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()

    async def _set_gate(self, open_: bool) -> None:
        assert self._gate is not None
        if open_:
            self._gate.set()
        else:
            self._gate.clear()

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._record, self._auth], client_max_size=4 * 1024 * 1024)
        app.router.add_get("/v1.0/healthz", self._healthz)
        app.router.add_get("/v1.0/healthz/outbound", self._healthz)
        app.router.add_post("/v1.0/publish/{pubsub}/{topic}", self._publish)
        app.router.add_post("/v1.0-alpha1/publish/bulk/{pubsub}/{topic}", self._bulk)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request,
                      handler: _Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        with self._lock:
            self._requests.append((request.method, request.path, response.status))
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: _Handler) -> web.StreamResponse:
        exempt = request.path.startswith("/v1.0/healthz")
        if self.token is not None and not exempt and request.headers.get("dapr-api-token") != self.token:
            return _error(401, "ERR_API_UNAUTHORIZED", "invalid api token")
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _gated(self) -> None:
        with self._lock:
            self._inflight += 1
        try:
            assert self._gate is not None
            await self._gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            with self._lock:
                self._inflight -= 1

    def _check_target(self, request: web.Request, missing_status: int) -> web.Response | None:
        pubsub = request.match_info["pubsub"]
        if pubsub not in self.pubsubs:
            return _error(missing_status, "ERR_PUBSUB_NOT_FOUND", f"pubsub {pubsub} not found")
        if self.forbidden:
            return _error(403, "ERR_PUBSUB_FORBIDDEN", f"topic {request.match_info['topic']} is not allowed "
                          "for app id edged")
        return None

    @staticmethod
    def _as_cloudevent(content_type: str, payload: Any, raw: bytes) -> dict[str, Any] | str:
        """The CloudEvent daprd would publish, or the reason it refuses the payload."""
        if content_type.startswith(CLOUDEVENT):
            if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
                return f"not a CloudEvent: needs {', '.join(_REQUIRED)}"
            return payload
        data: Any = payload if payload is not None else raw.decode("utf-8", "replace")
        return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "edged", "type": "com.dapr.event.sent",
                "datacontenttype": content_type or "text/plain", "data": data}

    async def _publish(self, request: web.Request) -> web.Response:
        refused = self._check_target(request, 404)
        if refused is not None:
            return refused
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "text/plain")
        try:
            payload = json.loads(raw) if "json" in content_type else None
        except ValueError:
            return _error(400, "ERR_PUBSUB_CLOUD_EVENTS_SER", "body is not valid JSON")
        event = self._as_cloudevent(content_type, payload, raw)
        if isinstance(event, str):
            return _error(400, "ERR_PUBSUB_CLOUD_EVENTS_SER", event)
        await self._gated()
        event_id = str(event["id"])
        if event_id in self.reject:
            status = self.reject[event_id]
            return _error(status, "ERR_PUBSUB_REQUEST_REFUSED", f"event {event_id} refused by the test")
        if self.failing or event_id in self.fail_ids:
            return _error(500, "ERR_PUBSUB_PUBLISH_MESSAGE", "error when publishing: broker unreachable")
        with self._lock:
            metadata = {k.removeprefix("metadata."): v for k, v in request.query.items() if k.startswith("metadata.")}
            self._published.append(Published("single", request.match_info["pubsub"],
                                             request.match_info["topic"], content_type, event, metadata))
        return web.Response(status=204)

    async def _bulk(self, request: web.Request) -> web.Response:
        refused = self._check_target(request, 400)
        if refused is not None:
            return refused
        try:
            entries = json.loads(await request.read())
        except ValueError:
            return _error(400, "ERR_PUBSUB_EVENTS_SER", "bulk body is not valid JSON")
        if not isinstance(entries, list):
            return _error(400, "ERR_PUBSUB_EVENTS_SER", "bulk body must be a JSON array of entries")
        seen: set[str] = set()
        events: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("entryId"), str) or "event" not in entry:
                return _error(400, "ERR_PUBSUB_EVENTS_SER", "each entry needs entryId and event")
            entry_id = entry["entryId"]
            if entry_id in seen:
                return _error(400, "ERR_PUBSUB_EVENTS_SER", f"duplicate entryId {entry_id}")
            seen.add(entry_id)
            content_type = str(entry.get("contentType") or "")
            event = self._as_cloudevent(content_type, entry["event"], b"")
            if isinstance(event, str):
                return _error(400, "ERR_PUBSUB_CLOUD_EVENTS_SER", f"entry {entry_id}: {event}")
            if str(event["id"]) in self.reject:
                # daprd refuses the whole request when one entry cannot be serialized.
                return _error(self.reject[str(event["id"])], "ERR_PUBSUB_EVENTS_SER",
                              f"entry {entry_id} refused by the test")
            metadata = entry.get("metadata") or {}
            if not isinstance(metadata, dict):
                return _error(400, "ERR_PUBSUB_EVENTS_SER", f"entry {entry_id}: metadata must be an object")
            events.append((entry_id, content_type, event, {str(k): str(v) for k, v in metadata.items()}))
        await self._gated()
        failed = []
        for entry_id, content_type, event, metadata in events:
            if self.failing or str(event["id"]) in self.fail_ids:
                failed.append({"entryId": entry_id, "error": "broker unreachable"})
                continue
            with self._lock:
                self._published.append(Published("bulk", request.match_info["pubsub"],
                                                 request.match_info["topic"], content_type, event, metadata))
        if failed:
            return web.json_response({"failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"},
                                     status=500)
        return web.Response(status=204)
