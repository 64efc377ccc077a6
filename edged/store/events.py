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
from edged.store.group import Job
from edged.store.outbox import OutboxEntry
from edged.store.space import Space

__all__ = ["INSERT_EVENTS", "INSERT_INPUTS", "INSERT_OUTBOX", "Admit", "EventRows", "Queueing"]

log = logging.getLogger(__name__)

#: How an event goes to the cloud: with its image bytes, without them, or not at all (too large).
Queueing = Literal["with_image", "without_image", "oversize"]
#: The sync side's decision for one event (edged.sync.cloudevents.CloudEvents.admit); the entry holds
#: the image bytes when the event has any.
Admit = Callable[[OutboxEntry], Queueing]

SELECT_EVENTS = "SELECT id, seq, camera, function, kind, data, body, content_type, created_at FROM events "


#: The rows of one committed input, the same statements for one input or many (bench/outbox_floor.py too).
INSERT_EVENTS = ("INSERT INTO events (seq, id, camera, function, kind, data, body, content_type, created_at, "
                 "mqtt_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_OUTBOX = "INSERT INTO outbox (seq, with_image) VALUES (?, ?)"
INSERT_INPUTS = "INSERT INTO inputs (frame, received_at, first_seq, events) VALUES (?, ?, ?, ?)"
# The seq AUTOINCREMENT would hand out next, minus one: the rows of a batch get theirs in one go.
_LAST_SEQ = ("SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), "
             "COALESCE((SELECT MAX(seq) FROM events), 0))")
# One encoder for every body (json.dumps with arguments builds a new one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps(value: Any) -> bytes:
    return _ENCODE(value).encode()


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


@dataclass(slots=True)
class _Input:
    """One commit_input job: what it writes, its events prepared once (ids, packed bodies, admit)."""

    camera: str
    key: int
    received_at: float
    events: list[NewEvent]
    publish_mqtt: bool
    now: float = 0.0
    prepared: list[_Prepared] | None = None
    forgotten: int | None = None


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
        inp = _Input(camera, frame_key(camera, sha256), received_at, events, publish_mqtt)

        def settle(error: BaseException | None) -> None:
            if error is None:
                # Committed: its attempts (if it was an MQTT frame that had some) no longer count.
                self._attempts.forgotten(inp.forgotten)
            elif isinstance(error, OutboxFull):
                self._db.counters.refused()
                if self._metrics is not None:
                    self._metrics.outbox_rejected.inc()
            self._space.vacuum()

        # Concurrent commits (and attempts) share one transaction and fsync: edged.store.group; commits
        # next to each other in it are written together (_write_many).
        size = sum(ROW_COST + len(ev.body or b"") for ev in events)
        stored = await self._db.commit(lambda db, delta: self._write(db, delta, inp), size=size, settle=settle,
                                       many=self._write_many, item=inp)
        self._queued.set()
        return stored

    def _prepare(self, inp: _Input) -> list[_Prepared]:
        """The input's events with their ids, stored bodies and admit decisions, made once per job."""
        if inp.prepared is None:
            inp.now = now = self._clock()
            inp.prepared = [self._prepare_one(ev, inp.camera, now) for ev in inp.events]
        return inp.prepared

    def _prepare_one(self, event: NewEvent, camera: str, now: float) -> _Prepared:
        event_id = new_event_id()
        body = _dumps(event.data)
        packed = pack(body)
        entry = OutboxEntry(event_id, 0, camera, event.function, event.kind, now, with_id(event_id, body),
                            event.body, 0)
        size = len(packed) + (len(event.body) if event.body is not None else 0) + ROW_COST
        return _Prepared(event, event_id, packed, size, self._admit(entry))

    def _write(self, db: sqlite3.Connection, delta: Delta, inp: _Input) -> list[StoredEvent]:
        """The rows of one input, after freeing what room they need (writer thread, in its job's savepoint)."""
        prepared = self._prepare(inp)
        self._space.expire(db, delta, inp.now)
        self._space.make_room(db, delta, sum(p.size for p in prepared))
        return self._insert(db, [(inp, delta)])[0]

    def _write_many(self, db: sqlite3.Connection, jobs: list[Job[Any]]) -> bool:
        """The rows of several inputs at once (edged.store.group ``Many``); False when one of them needs
        room freed or expiry is due: then each goes through ``_write``."""
        inputs: list[_Input] = [job.item for job in jobs]
        incoming = sum(p.size for inp in inputs for p in self._prepare(inp))
        if not self._space.room_for(max(inp.now for inp in inputs), incoming):
            return False
        for job, stored in zip(jobs, self._insert(db, [(job.item, job.delta) for job in jobs]), strict=True):
            job.result = stored
        return True

    def _insert(self, db: sqlite3.Connection, inputs: list[tuple[_Input, Delta]]) -> list[list[StoredEvent]]:
        """Insert prepared inputs (one statement per table), each counted in its own delta; their events."""
        seq = db.execute(_LAST_SEQ).fetchone()[0]
        event_rows: list[tuple[Any, ...]] = []
        outbox_rows: list[tuple[int, int]] = []
        input_rows: list[tuple[int, float, int, int]] = []
        out: list[list[StoredEvent]] = []
        for inp, delta in inputs:
            assert inp.prepared is not None
            camera, now, stored = inp.camera, inp.now, []
            for p in inp.prepared:
                seq += 1
                ev = p.event
                event_rows.append((seq, id_bytes(p.id), camera, ev.function, KINDS.index(ev.kind), p.packed, ev.body,
                                   ev.content_type, now, int(inp.publish_mqtt)))
                delta.events += 1
                delta.committed += 1
                delta.events_bytes += p.size
                if p.queueing == "oversize":
                    delta.evict("oversize", 1, [p.id])
                else:
                    outbox_rows.append((seq, int(p.queueing == "with_image")))
                    delta.queued += 1
                    delta.outbox_bytes += p.size
                stored.append(StoredEvent(p.id, seq, camera, ev.function, ev.kind, {"id": p.id, **ev.data}, ev.body,
                                          ev.content_type, now))
            delta.quarantined += sum(ev.kind == "error" and (ev.data.get("error") or {}).get("code")
                                     == Quarantined.code for ev in inp.events)
            # One job by the one writer: an input's events have consecutive seqs.
            input_rows.append((inp.key, inp.received_at, stored[0].seq if stored else 0, len(stored)))
            out.append(stored)
        db.executemany(INSERT_EVENTS, event_rows)
        if outbox_rows:
            db.executemany(INSERT_OUTBOX, outbox_rows)
        db.executemany(INSERT_INPUTS, input_rows)
        for inp, _ in inputs:
            inp.forgotten = self._attempts.forget_in(db, inp.key)
        return out

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        return await self._db.run(lambda: self.recent_in(self._db.con, camera, sha256, window_s))

    def recent_in(self, db: sqlite3.Connection, camera: str, sha256: str,
                  window_s: float) -> list[StoredEvent] | None:
        """``recent_input`` on the writer thread, inside the caller's job (edged.store.attempts counts after it)."""
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

