"""The event history over HTTP: list, one event, its image, and the live stream (Server-Sent Events).

``GET /v1/events`` pages newest first with a ``next`` cursor passed back as ``before``;
``GET /v1/events/stream`` subscribes first, then sends what the store holds after the resume point
(``Last-Event-ID``), then the live feed, skipping what it already sent by seq: no gap, no duplicate.
A client that falls behind is caught up from the store (edged.store.live); one that stops reading for
``WRITE_TIMEOUT`` seconds is dropped. Streams end at shutdown (the app's on_shutdown closes the feed).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from edged.errors import BadRequest
from edged.events import Kind, rfc3339
from edged.store import Entry, Live, Query, Subscription
from edged.store.history import MAX_LIMIT, HistoryReader

__all__ = ["KEEPALIVE", "EventSource", "add_event_routes", "document"]

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0
#: Seconds one write to a stream may wait for the client before the stream is dropped.
WRITE_TIMEOUT = 30.0
#: Seqs a catch-up after a lag re-reads below the highest sent: commits that finish out of seq order
#: (a group commit) are still sent once; sent seqs are remembered for ``_RECENT`` of them.
_REORDER = 256
_RECENT = 1024
_CATCH_UP_PAGE = 200
#: Seconds between looks at whether an idle stream's client is still connected.
_POLL = 1.0
_ID = re.compile(r"^[0-9a-f]{32}$")
_CURSOR = re.compile(r"^c(\d{1,18})$")


class EventSource(Protocol):
    """What the routes need from the store (edged.store.Store)."""

    @property
    def history(self) -> HistoryReader: ...
    @property
    def live(self) -> Live: ...


def document(entry: Entry) -> dict[str, Any]:
    """The event as the API shows it: the stored body plus ``created_at`` and ``image_url``."""
    return {**entry.data, "created_at": rfc3339(entry.created_at),
            "image_url": f"/v1/events/{entry.id}/image" if entry.has_image else None}


def _id_time(event_id: str) -> float:
    """The commit time a UUIDv7 carries (its first 48 bits, milliseconds)."""
    return int(event_id[:12], 16) / 1000


def _time(name: str, value: str) -> float:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: a cursor, an event id or an RFC 3339 time, not {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _filters(request: web.Request) -> Query:
    q = request.query
    kinds: dict[str | None, Kind | None] = {None: None, "result": "result", "error": "error"}
    if q.get("kind") not in kinds:
        raise BadRequest("kind: result or error")
    for name in ("camera", "function"):
        if name in q and not q[name]:
            raise BadRequest(f"{name}: empty")
    return Query(camera=q.get("camera"), function=q.get("function"), kind=kinds[q.get("kind")])


class _Routes:
    def __init__(self, store: EventSource, keepalive: float) -> None:
        self._history = store.history
        self._live = store.live
        self._keepalive = keepalive

    async def _seq_bound(self, name: str, value: str) -> int | float:
        """A ``c<seq>`` cursor or an event id as a seq (int), or a time (float)."""
        if (m := _CURSOR.match(value)) is not None:
            return int(m.group(1))
        if _ID.match(value):
            seq = await self._history.seq_of(value)
            return seq if seq is not None else _id_time(value)  # gone from the store: its time still orders it
        return _time(name, value)

    async def list(self, request: web.Request) -> web.Response:
        query = _filters(request)
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
        except ValueError as exc:
            raise BadRequest("limit: a whole number") from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit: 1 to {MAX_LIMIT}")
        query = replace(query, limit=limit)
        if "since" in q:
            since = await self._seq_bound("since", q["since"])
            query = replace(query, after=since) if isinstance(since, int) else replace(query, since=since)
        if "before" in q:
            before = await self._seq_bound("before", q["before"])
            query = replace(query, before=before) if isinstance(before, int) else replace(query, until=before)
        page = await self._history.page(query)
        return web.json_response({"events": [document(e) for e in page.events],
                                  "next": f"c{page.next}" if page.next is not None else None})

    async def _entry_id(self, request: web.Request) -> str:
        event_id = request.match_info["id"].lower()
        if not _ID.match(event_id):
            raise web.HTTPNotFound(text=f"no event {request.match_info['id']!r}")
        return event_id

    async def get(self, request: web.Request) -> web.Response:
        event_id = await self._entry_id(request)
        entry = await self._history.get(event_id)
        if entry is None:
            raise web.HTTPNotFound(text=f"no event {event_id} (never, or no longer, held)")
        return web.json_response(document(entry))

    async def image(self, request: web.Request) -> web.Response:
        event_id = await self._entry_id(request)
        image = await self._history.image(event_id)
        if image is None:
            raise web.HTTPNotFound(text=f"no stored image for event {event_id}")
        # An event's image never changes: the browser may keep it.
        return web.Response(body=image.body, content_type=image.content_type,
                            headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        query = _filters(request)
        if request.method == "HEAD":  # the headers a stream would have, without holding one open
            return web.Response(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resume = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        if resume is not None:
            resume = resume.strip().lower()
            if not _ID.match(resume):
                raise BadRequest("Last-Event-ID: an event id (32 hex digits)")
            seq = await self._history.seq_of(resume)
            start = seq if seq is not None else await self._history.position_at(_id_time(resume))
        else:
            start = await self._history.position_at(math.inf)
        # Subscribed before the backlog is read: whatever commits meanwhile is in one or the other.
        with self._live.subscribe(query) as sub:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
            await resp.prepare(request)
            sender = _Sender(resp, self._history, query, sub, start)
            try:
                await sender.run(self._keepalive, lambda: request.transport is None or request.transport.is_closing())
                await resp.write_eof()
            except ConnectionError:
                pass  # the client went away
            except TimeoutError:
                # It stopped reading: drop the connection, or the response's end would wait on it too.
                if request.transport is not None:
                    request.transport.abort()
            return resp

    async def shutdown(self, app: web.Application) -> None:
        self._live.close()


class _Sender:
    """One stream's writer and what it has sent (by seq)."""

    def __init__(self, resp: web.StreamResponse, history: HistoryReader, query: Query, sub: Subscription,
                 start: int) -> None:
        self._resp = resp
        self._history = history
        self._query = query
        self._sub = sub
        #: Every matching event up to here has been sent (or came before the stream's start).
        self._floor = start
        self._high = start
        self._recent: set[int] = set()
        self._order: deque[int] = deque()

    async def run(self, keepalive: float, gone: Callable[[], bool]) -> None:
        """Until the feed closes or the client is ``gone`` (looked at every ``_POLL`` seconds while idle)."""
        loop = asyncio.get_running_loop()
        await self._catch_up(self._floor)
        quiet_since = loop.time()
        while not self._sub.closed:
            try:
                async with asyncio.timeout(min(_POLL, keepalive)):
                    entry = await self._sub.next()
            except TimeoutError:
                if gone():
                    return
                if loop.time() - quiet_since >= keepalive:
                    await self._write(b": keep-alive\n\n")
                    quiet_since = loop.time()
                continue
            quiet_since = loop.time()
            if self._sub.take_lag():
                await self._catch_up(max(self._floor, self._high - _REORDER))
            elif entry is not None:
                await self._send(entry)

    async def _catch_up(self, after: int) -> None:
        """Send what the store holds after ``after`` that was not sent yet, oldest first."""
        cursor: int | None = after
        while cursor is not None and not self._sub.closed:
            page = await self._history.page(replace(self._query, after=cursor, limit=_CATCH_UP_PAGE),
                                            oldest_first=True)
            for entry in page.events:
                await self._send(entry)
            if page.events:
                self._floor = max(self._floor, page.events[-1].seq)
            cursor = page.next

    async def _send(self, entry: Entry) -> None:
        if entry.seq <= self._floor or entry.seq in self._recent:
            return
        data = json.dumps(document(entry), separators=(",", ":"))
        await self._write(f"id: {entry.id}\nevent: {entry.kind}\ndata: {data}\n\n".encode())
        self._high = max(self._high, entry.seq)
        self._recent.add(entry.seq)
        self._order.append(entry.seq)
        if len(self._order) > _RECENT:
            self._recent.discard(self._order.popleft())

    async def _write(self, chunk: bytes) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await self._resp.write(chunk)


def add_event_routes(app: web.Application, store: EventSource, *, keepalive: float = KEEPALIVE) -> None:
    """GET /v1/events, /v1/events/stream, /v1/events/{id} and /v1/events/{id}/image on ``app``."""
    routes = _Routes(store, keepalive)
    app.router.add_get("/v1/events", routes.list)
    app.router.add_get("/v1/events/stream", routes.stream)  # before {id}, which would match "stream"
    app.router.add_get("/v1/events/{id}", routes.get)
    app.router.add_get("/v1/events/{id}/image", routes.image)
    app.on_shutdown.append(routes.shutdown)
