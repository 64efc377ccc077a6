"""The cloud outbox: batches in order per camera, acks, retries, dead letters, and its counts."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edged.store.counters import Delta
from edged.store.db import Database, chunks, marks
from edged.store.space import Space

__all__ = ["DeadLetter", "OutboxEntry", "OutboxRows", "OutboxState"]

log = logging.getLogger(__name__)

#: Dead letters listed by outbox_state.
DEAD_LISTED = 20


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued CloudEvent, ready to publish."""

    id: str
    seq: int
    camera: str
    function: str
    cloudevent: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    camera: str
    function: str
    reason: str
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class OutboxState:
    """What the store knows about its outbox; the HTTP layer shapes it into GET /v1/outbox."""

    depth: int
    bytes: int
    store_bytes: int
    oldest_age_s: float | None
    dead: int
    dead_letters: list[DeadLetter]
    evicted_total: int
    evicted: dict[str, int]


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
        blocked = dict(db.execute("SELECT camera, MIN(seq) FROM outbox WHERE state = 0 AND not_before > ? "
                                  "GROUP BY camera", (now,)).fetchall())
        cur = db.execute("SELECT id, seq, camera, function, cloudevent, attempts FROM outbox WHERE state = 0 "
                         "ORDER BY seq")
        batch: list[OutboxEntry] = []
        try:
            while len(batch) < limit:
                rows = cur.fetchmany(max(limit, 64))
                if not rows:
                    break
                for event_id, seq, camera, function, cloudevent, attempts in rows:
                    first_waiting = blocked.get(camera)
                    if first_waiting is not None and seq >= first_waiting:
                        continue
                    batch.append(OutboxEntry(event_id, seq, camera, function, cloudevent, attempts))
                    if len(batch) >= limit:
                        break
        finally:
            cur.close()
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self._db.run(self._ack, list(ids))

    def _ack(self, ids: list[str]) -> None:
        def body(db: sqlite3.Connection, delta: Delta) -> None:
            for chunk in chunks(ids):
                where = f"WHERE id IN ({marks(chunk)})"
                # No DELETE ... RETURNING: Debian 11's SQLite (3.34) predates it.
                for size, state in db.execute(f"SELECT bytes, state FROM outbox {where}", chunk):  # noqa: S608
                    delta.outbox_gone(size, state)
                db.execute(f"DELETE FROM outbox {where}", chunk)  # noqa: S608

        self._db.transaction(body)

    async def retry(self, ids: Sequence[str], error: str, not_before: float) -> None:
        if ids:
            await self._db.run(self._update, "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                               "not_before = ? WHERE state = 0 AND id IN ({})", list(ids), (error, not_before), False)

    async def dead(self, ids: Sequence[str], reason: str) -> None:
        if ids:
            await self._db.run(self._update, "UPDATE outbox SET state = 1, attempts = attempts + 1, "
                               "last_error = ? WHERE state = 0 AND id IN ({})", list(ids), (reason,), True)

    def _update(self, sql: str, ids: list[str], params: tuple[Any, ...], to_dead: bool) -> None:
        def body(db: sqlite3.Connection, delta: Delta) -> None:
            for chunk in chunks(ids):
                n = db.execute(sql.format(marks(chunk)), (*params, *chunk)).rowcount
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
        oldest = db.execute("SELECT created_at FROM outbox WHERE state = 0 ORDER BY seq LIMIT 1").fetchone()
        dead = [DeadLetter(*row) for row in db.execute(
            "SELECT id, camera, function, last_error, attempts, created_at FROM outbox "
            "WHERE state = 1 ORDER BY seq DESC LIMIT ?", (DEAD_LISTED,))]
        return OutboxState(
            depth=counters.queued, bytes=counters.outbox_bytes, store_bytes=counters.used,
            oldest_age_s=round(self._clock() - oldest[0], 3) if oldest is not None else None,
            dead=counters.dead, dead_letters=dead, evicted_total=counters.evicted_total,
            evicted=dict(sorted(counters.evicted_by_reason.items())),
        )

