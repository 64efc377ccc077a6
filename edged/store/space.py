"""Space and age: the store's event data stays within ``outbox.max_bytes`` and ``outbox.max_age``.

When a commit would pass the cap, history goes first, silently (events rows waiting for nothing), then
the outbox policy decides: ``drop_oldest`` evicts the oldest outbox rows (counted, logged, shown),
``reject_new`` raises OutboxFull and the commit writes nothing. Rows older than ``max_age`` are expired
in either mode, at most every ``EXPIRE_EVERY`` seconds. Every deletion goes through ``delete_oldest``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Literal

from edged.errors import OutboxFull
from edged.store.counters import Delta
from edged.store.db import Database

__all__ = ["Space"]

log = logging.getLogger(__name__)

#: Age expiry and history pruning run at most this often (seconds of store time).
EXPIRE_EVERY = 5.0
#: Rows looked at per step when freeing space or expiring (bounded work per statement).
SCAN_STEP = 500
#: Free pages kept for reuse; above this many the file is shrunk (incremental vacuum).
VACUUM_FREE_PAGES = 4096

Table = Literal["events", "outbox"]
#: The column after (seq, id, bytes, created_at) in each table: what a deletion must account for.
_FLAG = {"events": "mqtt_pending", "outbox": "state"}


def delete_oldest(db: sqlite3.Connection, delta: Delta, table: Table, take: Callable[[int, float], bool],
                  reason: str, where: str = "") -> int:
    """Delete the oldest rows of ``table`` (matching ``where``) while ``take(bytes, created_at)`` says so.

    Outbox rows count as evictions for ``reason``; events rows only free their bytes (history), and
    one still waiting for MQTT is logged. Returns how many rows went.
    """
    sql = f"SELECT seq, id, bytes, created_at, {_FLAG[table]} FROM {table} {where} ORDER BY seq LIMIT ?"  # noqa: S608
    removed = 0
    while True:
        rows = db.execute(sql, (SCAN_STEP,)).fetchall()
        chosen = []
        for row in rows:
            if not take(row[2], row[3]):
                break
            chosen.append(row)
        if not chosen:
            return removed
        db.executemany(f"DELETE FROM {table} WHERE seq = ?", [(r[0],) for r in chosen])  # noqa: S608
        removed += len(chosen)
        if table == "outbox":
            for _, _, size, _, state in chosen:
                delta.outbox_gone(size, state)
            delta.evict(reason, len(chosen), [r[1] for r in chosen])
        else:
            delta.events_bytes -= sum(r[2] for r in chosen)
            pending = sum(r[4] for r in chosen)
            if pending:
                log.warning("store: %d events dropped (%s) before they were published on MQTT", pending, reason)
        if len(chosen) < len(rows):
            return removed


class Space:
    """Caps, expiry and the file's free pages; every method runs on the writer thread."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        self._next_expire = 0.0
        self._vacuum_due = False

    @property
    def expiry_due(self) -> bool:
        return self._clock() >= self._next_expire

    def make_room(self, db: sqlite3.Connection, delta: Delta, incoming: int) -> None:
        """Free space for ``incoming`` bytes: history first, then the outbox policy."""
        outbox = self._db.counters.outbox
        need = self._db.counters.used + delta.events_bytes + delta.outbox_bytes + incoming - outbox.max_bytes
        if need <= 0:
            return

        def take(size: int, created_at: float) -> bool:
            nonlocal need
            if need <= 0:
                return False
            need -= size
            return True

        delete_oldest(db, delta, "events", take, "max_bytes", "WHERE mqtt_pending = 0")
        if need > 0:
            if outbox.on_full == "reject_new":
                raise OutboxFull(f"outbox at its cap of {outbox.max_bytes} bytes ({self._db.counters.queued} "
                                 "events queued); nothing stored (on_full = reject_new)")
            delete_oldest(db, delta, "outbox", take, "max_bytes")
        self.prune_inputs(db)

    def expire(self, db: sqlite3.Connection, delta: Delta, now: float) -> None:
        """Drop rows older than max_age (outbox rows count as evictions). Throttled; assumes a sane clock."""
        if now < self._next_expire:
            return
        self._next_expire = now + EXPIRE_EVERY
        self._vacuum_due = True
        cutoff = now - self._db.counters.outbox.max_age

        def old(size: int, created_at: float) -> bool:
            return created_at < cutoff

        delete_oldest(db, delta, "outbox", old, "max_age")
        delete_oldest(db, delta, "events", old, "max_age")
        if db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
            db.execute("DELETE FROM inputs WHERE received_at < ?", (cutoff,))
        else:
            self.prune_inputs(db)

    def expire_now(self) -> None:
        """Expiry outside a commit (from outbox_batch), in its own transaction, then vacuum."""
        now = self._clock()
        if now >= self._next_expire:
            self._db.transaction(lambda db, delta: self.expire(db, delta, now))
            self.vacuum()

    @staticmethod
    def prune_inputs(db: sqlite3.Connection) -> None:
        """Inputs older than the oldest remaining event are no longer needed."""
        oldest = db.execute("SELECT input_id FROM events ORDER BY seq LIMIT 1").fetchone()
        if oldest is not None:
            db.execute("DELETE FROM inputs WHERE id < ?", (oldest[0],))

    def vacuum(self) -> None:
        """Give free pages back to the filesystem (after a backlog drained), at most once per expiry pass."""
        if not self._vacuum_due:
            return
        self._vacuum_due = False
        db = self._db.con
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free > VACUUM_FREE_PAGES:
            db.execute(f"PRAGMA incremental_vacuum({free - VACUUM_FREE_PAGES // 2})").fetchall()
