"""Inputs and their events: the one durable commit, the dedupe look-up, and the MQTT publish marks.

Each event is stored once (edged.store.codec has its on-disk form); its outbox row, when it is synced,
only points at it. Whether and how it is synced is the sync side's call (``Admit``), made once here
and kept in the outbox row, so what is sent is the same on every retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edged.errors import OutboxFull, Quarantined
from edged.events import NewEvent, StoredEvent, new_event_id
from edged.metrics import Metrics
from edged.store.attempts import Attempts
from edged.store.codec import KINDS, ROW_COST, frame_key, id_bytes, id_text, pack, unpack, with_id
from edged.store.counters import Delta
from edged.store.db import Database, chunks, marks
from edged.store.outbox import OutboxEntry
from edged.store.space import Space

__all__ = ["Admit", "EventRows", "Queueing"]

log = logging.getLogger(__name__)

#: How an event goes to the cloud: with its image bytes, without them, or not at all (too large).
Queueing = Literal["with_image", "without_image", "oversize"]
#: The sync side's decision for one event (edged.sync.cloudevents.CloudEvents.admit); the entry holds
#: the image bytes when the event has any.
Admit = Callable[[OutboxEntry], Queueing]

SELECT_EVENTS = "SELECT id, seq, camera, function, kind, data, body, content_type, created_at FROM events "


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def stored_event(row: tuple[Any, ...]) -> StoredEvent:
    """A StoredEvent from a row selected by ``SELECT_EVENTS``."""
    raw_id, seq, camera, function, kind, data, body, content_type, created_at = row
    event_id = id_text(raw_id)
    return StoredEvent(event_id, seq, camera, function, KINDS[kind], json.loads(with_id(event_id, unpack(data))),
                       body, content_type, created_at)


@dataclass(slots=True)
class _Prepared:
    event: NewEvent
    id: str
    packed: bytes
    size: int
    queueing: Queueing


class EventRows:
    """The ``inputs`` and ``events`` tables; the public coroutines are wrapped by edged.store.Store."""

    def __init__(self, db: Database, space: Space, attempts: Attempts, admit: Admit, queued: asyncio.Event,
                 metrics: Metrics | None, clock: Callable[[], float]) -> None:
        self._db = db
        self._attempts = attempts
        self._space = space
        self._admit = admit
        self._queued = queued
        self._metrics = metrics
        self._clock = clock

    async def commit_input(self, *, transport: str, camera: str, sha256: str, received_at: float,
                           correlation: bytes | None, events: list[NewEvent],
                           publish_mqtt: bool) -> list[StoredEvent]:
        key = frame_key(camera, sha256)
        forgotten: int | None = None

        def body(db: sqlite3.Connection, delta: Delta) -> list[StoredEvent]:
            nonlocal forgotten
            stored = self._write(db, delta, camera, key, received_at, events, publish_mqtt)
            # Committed: its attempts (if it was an MQTT frame that had some) no longer count.
            forgotten = self._attempts.forget_in(db, key)
            return stored

        def settle(error: BaseException | None) -> None:
            if error is None:
                self._attempts.forgotten(forgotten)
            elif isinstance(error, OutboxFull):
                self._db.counters.refused()
                if self._metrics is not None:
                    self._metrics.outbox_rejected.inc()
            self._space.vacuum()

        # Concurrent commits (and attempts) share one transaction and fsync: edged.store.group.
        size = sum(ROW_COST + len(ev.body or b"") for ev in events)
        stored = await self._db.commit(body, size=size, settle=settle)
        self._queued.set()
        return stored

    def _prepare(self, event: NewEvent, camera: str, now: float) -> _Prepared:
        event_id = new_event_id()
        body = _dumps(event.data)
        packed = pack(body)
        entry = OutboxEntry(event_id, 0, camera, event.function, event.kind, now, with_id(event_id, body),
                            event.body, 0)
        size = len(packed) + (len(event.body) if event.body is not None else 0) + ROW_COST
        return _Prepared(event, event_id, packed, size, self._admit(entry))

    def _write(self, db: sqlite3.Connection, delta: Delta, camera: str, key: int, received_at: float,
               events: list[NewEvent], publish_mqtt: bool) -> list[StoredEvent]:
        """The rows of one input (writer thread, inside its job's savepoint)."""
        now = self._clock()
        prepared = [self._prepare(ev, camera, now) for ev in events]
        self._space.expire(db, delta, now)
        self._space.make_room(db, delta, sum(p.size for p in prepared))
        stored: list[StoredEvent] = []
        for p in prepared:
            ev = p.event
            cur = db.execute(
                "INSERT INTO events (id, camera, function, kind, data, body, content_type, created_at, "
                "mqtt_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (id_bytes(p.id), camera, ev.function, KINDS.index(ev.kind), p.packed, ev.body, ev.content_type,
                 now, int(publish_mqtt)))
            seq = cur.lastrowid
            assert seq is not None
            delta.events += 1
            delta.committed += 1
            delta.events_bytes += p.size
            if p.queueing == "oversize":
                delta.evict("oversize", 1, [p.id])
            else:
                db.execute("INSERT INTO outbox (seq, with_image) VALUES (?, ?)",
                           (seq, int(p.queueing == "with_image")))
                delta.queued += 1
                delta.outbox_bytes += p.size
            stored.append(StoredEvent(p.id, seq, camera, ev.function, ev.kind, {"id": p.id, **ev.data}, ev.body,
                                      ev.content_type, now))
        delta.quarantined += sum(p.event.kind == "error" and (p.event.data.get("error") or {}).get("code")
                                 == Quarantined.code for p in prepared)
        # One job by the one writer: an input's events have consecutive seqs.
        db.execute("INSERT INTO inputs (frame, received_at, first_seq, events) VALUES (?, ?, ?, ?)",
                   (key, received_at, stored[0].seq if stored else 0, len(stored)))
        return stored

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        return await self._db.run(self._recent_input, camera, sha256, window_s)

    def _recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        db = self._db.con
        row = db.execute("SELECT first_seq, events FROM inputs WHERE frame = ? AND received_at >= ? "
                         "ORDER BY id DESC LIMIT 1", (frame_key(camera, sha256), self._clock() - window_s)).fetchone()
        if row is None:
            return None
        first, n = row
        events = [stored_event(r) for r in db.execute(SELECT_EVENTS + "WHERE seq >= ? AND seq < ? ORDER BY seq",
                                                      (first, first + n))]
        # The key is 64 bits of a hash (a false match: ~2^-64 per input in the window); the camera is checked.
        return None if any(e.camera != camera for e in events) else events

    async def mqtt_pending(self, limit: int) -> list[StoredEvent]:
        return await self._db.run(self._mqtt_pending, limit)

    def _mqtt_pending(self, limit: int) -> list[StoredEvent]:
        rows = self._db.con.execute(SELECT_EVENTS + "WHERE mqtt_pending = 1 ORDER BY seq LIMIT ?", (limit,))
        return [stored_event(r) for r in rows]

    async def mqtt_published(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        raw = [id_bytes(i) for i in ids]

        def body(db: sqlite3.Connection, delta: Delta) -> None:
            for chunk in chunks(raw):
                db.execute(f"UPDATE events SET mqtt_pending = 0 WHERE id IN ({marks(chunk)})", chunk)  # noqa: S608
            delta.freed = True  # events out of the outbox may be history now

        # A group commit job, not fsynced on its own: a mark lost to a power cut only publishes again.
        await self._db.commit(body, size=ROW_COST * len(raw), durable=False)

