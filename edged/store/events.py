"""Inputs and their events: the one durable commit, the dedupe look-up, and the MQTT publish marks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edged.errors import OutboxFull
from edged.events import NewEvent, StoredEvent, new_event_id
from edged.metrics import Metrics
from edged.store.counters import Delta
from edged.store.db import Database, chunks, marks
from edged.store.space import Space

__all__ = ["Encode", "EventRows"]

log = logging.getLogger(__name__)

#: The serialized CloudEvent of an event, or None when it is too large to sync (edged.sync.cloudevents).
Encode = Callable[[StoredEvent], "bytes | None"]

_SELECT_EVENTS = "SELECT id, seq, camera, function, kind, data, body, content_type, created_at FROM events "


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class _Prepared:
    event: StoredEvent
    data_json: str
    event_bytes: int
    cloudevent: bytes | None


def _stored(row: tuple[Any, ...]) -> StoredEvent:
    event_id, seq, camera, function, kind, data, body, content_type, created_at = row
    return StoredEvent(event_id, seq, camera, function, kind, json.loads(data), body, content_type, created_at)


class EventRows:
    """The ``inputs`` and ``events`` tables; the public coroutines are wrapped by edged.store.Store."""

    def __init__(self, db: Database, space: Space, encode: Encode, queued: asyncio.Event,
                 metrics: Metrics | None, clock: Callable[[], float]) -> None:
        self._db = db
        self._space = space
        self._encode = encode
        self._queued = queued
        self._metrics = metrics
        self._clock = clock

    async def commit_input(self, *, transport: str, camera: str, sha256: str, received_at: float,
                           correlation: bytes | None, events: list[NewEvent],
                           publish_mqtt: bool) -> list[StoredEvent]:
        stored = await self._db.run(self._commit_input, transport, camera, sha256, received_at, correlation,
                                    events, publish_mqtt)
        self._queued.set()
        return stored

    def _prepare(self, event: NewEvent, camera: str, now: float) -> _Prepared:
        event_id = new_event_id()
        data = {"id": event_id, **event.data}
        data_json = _dumps(data)
        event_bytes = len(data_json.encode()) + (len(event.body) if event.body is not None else 0)
        stored = StoredEvent(event_id, 0, camera, event.function, event.kind, data, event.body, event.content_type,
                             now)
        return _Prepared(stored, data_json, event_bytes, self._encode(stored))

    def _commit_input(self, transport: str, camera: str, sha256: str, received_at: float,
                      correlation: bytes | None, events: list[NewEvent], publish_mqtt: bool) -> list[StoredEvent]:
        now = self._clock()
        prepared = [self._prepare(ev, camera, now) for ev in events]

        def body(db: sqlite3.Connection, delta: Delta) -> list[StoredEvent]:
            self._space.expire(db, delta, now)
            incoming = sum(p.event_bytes + (len(p.cloudevent) if p.cloudevent is not None else 0)
                           for p in prepared)
            self._space.make_room(db, delta, incoming)
            cur = db.execute("INSERT INTO inputs (transport, camera, sha256, received_at, correlation) "
                             "VALUES (?, ?, ?, ?, ?)", (transport, camera, sha256, received_at, correlation))
            input_id = cur.lastrowid
            stored: list[StoredEvent] = []
            for p in prepared:
                ev = p.event
                cur = db.execute(
                    "INSERT INTO events (id, input_id, camera, function, kind, data, body, content_type, "
                    "created_at, bytes, mqtt_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ev.id, input_id, camera, ev.function, ev.kind, p.data_json, ev.body, ev.content_type, now,
                     p.event_bytes, int(publish_mqtt)))
                seq = cur.lastrowid
                assert seq is not None
                delta.events_bytes += p.event_bytes
                if p.cloudevent is not None:
                    db.execute("INSERT INTO outbox (seq, id, camera, function, cloudevent, bytes, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (seq, ev.id, camera, ev.function, p.cloudevent, len(p.cloudevent), now))
                    delta.queued += 1
                    delta.outbox_bytes += len(p.cloudevent)
                else:
                    delta.evict("oversize", 1, [ev.id])
                stored.append(dataclasses.replace(ev, seq=seq))
            return stored

        try:
            return self._db.transaction(body)
        except OutboxFull:
            if self._metrics is not None:
                self._metrics.outbox_rejected.inc()
            raise
        finally:
            self._space.vacuum()

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        return await self._db.run(self._recent_input, camera, sha256, window_s)

    def _recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        db = self._db.con
        row = db.execute("SELECT id FROM inputs WHERE camera = ? AND sha256 = ? AND received_at >= ? "
                         "ORDER BY id DESC LIMIT 1", (camera, sha256, self._clock() - window_s)).fetchone()
        if row is None:
            return None
        return [_stored(r) for r in db.execute(_SELECT_EVENTS + "WHERE input_id = ? ORDER BY seq", (row[0],))]

    async def mqtt_pending(self, limit: int) -> list[StoredEvent]:
        return await self._db.run(self._mqtt_pending, limit)

    def _mqtt_pending(self, limit: int) -> list[StoredEvent]:
        rows = self._db.con.execute(_SELECT_EVENTS + "WHERE mqtt_pending = 1 ORDER BY seq LIMIT ?", (limit,))
        return [_stored(r) for r in rows]

    async def mqtt_published(self, ids: Sequence[str]) -> None:
        if ids:
            await self._db.run(self._mqtt_published, list(ids))

    def _mqtt_published(self, ids: list[str]) -> None:
        def body(db: sqlite3.Connection, delta: Delta) -> None:
            for chunk in chunks(ids):
                db.execute(f"UPDATE events SET mqtt_pending = 0 WHERE id IN ({marks(chunk)})", chunk)  # noqa: S608

        self._db.transaction(body)
