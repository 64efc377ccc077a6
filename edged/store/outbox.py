"""The cloud outbox: batches in order per camera, acks, retries, dead letters, and its counts.

An outbox row points at its events row (same seq). A batch hands out what the sync side needs to build
each CloudEvent (edged.sync.cloudevents): the stored JSON with its id, and the image bytes only when the
row was queued with them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edged.store.codec import KINDS, SIZE_SQL, id_bytes, id_text, unpack, with_id
from edged.store.counters import Delta
from edged.store.db import Database, chunks, marks
from edged.store.space import Space

__all__ = ["DeadLetter", "OutboxEntry", "OutboxRows", "OutboxState"]

log = logging.getLogger(__name__)

#: Dead letters listed by outbox_state.
DEAD_LISTED = 20


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued event, as the sync side needs it to build and send its CloudEvent."""

    id: str
    seq: int
    camera: str
    function: str
    kind: Literal["result", "error"]
    created_at: float
    data: bytes  # the event body JSON, "id" first: byte-for-byte what was committed
    body: bytes | None  # the image bytes, only when the event is synced with them
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the sidecar refused for good, with its reason."""

    id: str
    camera: str
    function: str
    reason: str
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class OutboxState:
    """What the store knows about its outbox and its space; the HTTP layer shapes it for GET /v1/outbox."""

    depth: int
    bytes: int
    store_bytes: int
    oldest_age_s: float | None
    dead: int
    dead_letters: list[DeadLetter]
    evicted_total: int
    evicted: dict[str, int]
    events: int  # results held (queued, dead, or kept as history)
    disk_bytes: int  # pages in use in the database file
    rate_per_s: float  # results committed per second, recently
    quarantined: int = 0  # MQTT frames set aside after crashing edged mqtt.max_attempts times (persisted)


_BATCH = ("SELECT o.seq, e.id, e.camera, e.function, e.kind, e.created_at, e.data, "
          "CASE WHEN o.with_image THEN e.body END, o.attempts FROM outbox o JOIN events e ON e.seq = o.seq "
          "WHERE o.state = 0 ORDER BY o.seq")


class OutboxRows:
    """The ``outbox`` table; the public coroutines are wrapped by edged.store.Store."""

    def __init__(self, db: Database, space: Space, queued: asyncio.Event, clock: Callable[[], float]) -> None:
        self._db = db
        self._space = space
        self._queued = queued
        self._clock = clock

    async def batch(self, limit: int, now: float) -> list[OutboxEntry]:
        # Cleared before reading, so a commit racing with this read wakes the next wait_queued().
        self._queued.clear()
        return await self._db.run(self._batch, limit, now)

    def _batch(self, limit: int, now: float) -> list[OutboxEntry]:
        # Expiry follows the store's clock; ``now`` only decides which retries are due.
        self._space.expire_now()
        db = self._db.con
        blocked = dict(db.execute("SELECT e.camera, MIN(o.seq) FROM outbox o JOIN events e ON e.seq = o.seq "
                                  "WHERE o.state = 0 AND o.not_before > 0 AND o.not_before > ? GROUP BY e.camera",
                                  (now,)).fetchall())
        cur = db.execute(_BATCH)
        batch: list[OutboxEntry] = []
        try:
            while len(batch) < limit:
                rows = cur.fetchmany(max(limit, 64))
                if not rows:
                    break
                for seq, raw_id, camera, function, kind, created_at, data, body, attempts in rows:
                    first_waiting = blocked.get(camera)
                    if first_waiting is not None and seq >= first_waiting:
                        continue
                    event_id = id_text(raw_id)
                    batch.append(OutboxEntry(event_id, seq, camera, function, KINDS[kind], created_at,
                                             with_id(event_id, unpack(data)), body, attempts))
                    if len(batch) >= limit:
                        break
        finally:
            cur.close()
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self._db.run(self._ack, [id_bytes(i) for i in ids])

    def _ack(self, ids: list[bytes]) -> None:
        def body(db: sqlite3.Connection, delta: Delta) -> None:
            for chunk in chunks(ids):
                # No DELETE ... RETURNING: Debian 11's SQLite (3.34) predates it.
                rows = db.execute(f"SELECT o.seq, {SIZE_SQL}, o.state FROM events e JOIN outbox o ON o.seq = e.seq "  # noqa: S608
                                  f"WHERE e.id IN ({marks(chunk)})", chunk).fetchall()
                for _, size, state in rows:
                    delta.outbox_gone(size, state)
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in rows])

        self._db.transaction(body)

    async def retry(self, ids: Sequence[str], error: str, not_before: float) -> None:
        if ids:
            await self._db.run(self._update, "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                               "not_before = ? WHERE state = 0 AND seq IN ({})", ids, (error, not_before), False)

    async def dead(self, ids: Sequence[str], reason: str) -> None:
        if ids:
            await self._db.run(self._update, "UPDATE outbox SET state = 1, attempts = attempts + 1, "
                               "last_error = ? WHERE state = 0 AND seq IN ({})", ids, (reason,), True)

    def _update(self, sql: str, ids: Sequence[str], params: tuple[Any, ...], to_dead: bool) -> None:
        def body(db: sqlite3.Connection, delta: Delta) -> None:
            for chunk in chunks([id_bytes(i) for i in ids]):
                seqs = f"SELECT seq FROM events WHERE id IN ({marks(chunk)})"  # noqa: S608
                n = db.execute(sql.format(seqs), (*params, *chunk)).rowcount
                if to_dead:
                    delta.queued -= n
                    delta.dead += n

        self._db.transaction(body)

    async def retry_dead(self) -> int:
        n = await self._db.run(self._retry_dead)
        if n:
            self._queued.set()
        return n

    def _retry_dead(self) -> int:
        def body(db: sqlite3.Connection, delta: Delta) -> int:
            n = db.execute("UPDATE outbox SET state = 0, attempts = 0, not_before = 0 WHERE state = 1").rowcount
            delta.dead -= n
            delta.queued += n
            return n

        n = self._db.transaction(body)
        if n:
            log.info("outbox: %d dead letters put back in line", n)
        return n

    async def state(self) -> OutboxState:
        return await self._db.run(self._state)

    def _state(self) -> OutboxState:
        db = self._db.con
        counters = self._db.counters
        counters.flush_eviction_log()
        oldest = db.execute("SELECT e.created_at FROM outbox o JOIN events e ON e.seq = o.seq WHERE o.state = 0 "
                            "ORDER BY o.seq LIMIT 1").fetchone()
        dead = [DeadLetter(id_text(row[0]), *row[1:]) for row in db.execute(
            "SELECT e.id, e.camera, e.function, o.last_error, o.attempts, e.created_at FROM outbox o "
            "JOIN events e ON e.seq = o.seq WHERE o.state = 1 ORDER BY o.seq DESC LIMIT ?", (DEAD_LISTED,))]
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        now = self._clock()
        return OutboxState(
            depth=counters.queued, bytes=counters.outbox_bytes, store_bytes=counters.used,
            oldest_age_s=round(now - oldest[0], 3) if oldest is not None else None,
            dead=counters.dead, dead_letters=dead, evicted_total=counters.evicted_total,
            evicted=dict(sorted(counters.evicted_by_reason.items())), events=counters.events,
            disk_bytes=pages * db.execute("PRAGMA page_size").fetchone()[0], rate_per_s=counters.rate(),
            quarantined=counters.quarantined,
        )
