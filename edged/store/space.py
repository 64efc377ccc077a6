"""Space and age: the store's event data stays within ``outbox.max_bytes``, the history within its own caps.

Each result is counted once (its events row, edged.store.codec.SIZE_SQL). ``outbox.max_bytes`` caps the
whole store. History (events rows waiting for nothing) is held to ``history.max_bytes`` at each commit
and to ``history.max_age`` by expiry; when a commit would pass the store's cap, history goes first,
silently, then the outbox policy decides: ``drop_oldest`` evicts the oldest outbox rows (counted, logged,
shown), ``reject_new`` raises OutboxFull and the commit writes nothing. Outbox rows, and events waiting
only for MQTT, older than ``outbox.max_age`` are expired in either mode, at most every ``EXPIRE_EVERY``
seconds. Every deletion goes through ``delete_oldest``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Literal

from edged.errors import OutboxFull
from edged.settings import HistorySettings
from edged.store.codec import SIZE_SQL, id_text
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

Rows = Literal["history", "mqtt", "outbox"]
_NOT_QUEUED = "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = e.seq)"
#: Each kind of row, oldest first, as (seq, id, bytes, created_at, mqtt_pending, outbox state).
_SELECT: dict[Rows, str] = {
    # History: events waiting for nothing (acked, or never synced, and published or not to publish).
    "history": f"SELECT e.seq, e.id, {SIZE_SQL}, e.created_at, e.mqtt_pending, NULL FROM events e "  # noqa: S608
               f"WHERE e.mqtt_pending = 0 AND {_NOT_QUEUED} ORDER BY e.seq LIMIT ?",
    # Events out of the outbox still waiting to be published on MQTT (events_mqtt serves the order).
    "mqtt": f"SELECT e.seq, e.id, {SIZE_SQL}, e.created_at, e.mqtt_pending, NULL FROM events e "  # noqa: S608
            f"WHERE e.mqtt_pending = 1 AND {_NOT_QUEUED} ORDER BY e.seq LIMIT ?",
    "outbox": f"SELECT o.seq, e.id, {SIZE_SQL}, e.created_at, e.mqtt_pending, o.state FROM outbox o "  # noqa: S608
              "JOIN events e ON e.seq = o.seq ORDER BY o.seq LIMIT ?",
}


def delete_oldest(db: sqlite3.Connection, delta: Delta, rows: Rows, take: Callable[[int, float], bool],
                  reason: str) -> int:
    """Delete the oldest ``rows`` while ``take(bytes, created_at)`` says so; how many went.

    Outbox rows count as evictions for ``reason`` and take their event along unless it still waits
    for MQTT; events rows only free their bytes, and one still waiting for MQTT is logged.
    """
    removed = 0
    while True:
        found = db.execute(_SELECT[rows], (SCAN_STEP,)).fetchall()
        chosen = []
        for row in found:
            if not take(row[2], row[3]):
                break
            chosen.append(row)
        if not chosen:
            return removed
        removed += len(chosen)
        complete = len(chosen) == len(found)
        if rows == "outbox":
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in chosen])
            for _, _, size, _, _, state in chosen:
                delta.outbox_gone(size, state)
            delta.evict(reason, len(chosen), [id_text(r[1]) for r in chosen])
            chosen = [r for r in chosen if not r[4]]
        db.executemany("DELETE FROM events WHERE seq = ?", [(r[0],) for r in chosen])
        for row in chosen:
            delta.event_gone(row[2])
        pending = sum(r[4] for r in chosen)
        if pending:
            log.warning("store: %d events dropped (%s) before they were published on MQTT", pending, reason)
        if not complete:
            return removed


class Space:
    """Caps, expiry and the file's free pages; every method runs on the writer thread."""

    def __init__(self, db: Database, clock: Callable[[], float], history: HistorySettings) -> None:
        self._db = db
        self._clock = clock
        self._history = history
        self._next_expire = 0.0
        self._vacuum_due = False

    @property
    def expiry_due(self) -> bool:
        return self._clock() >= self._next_expire

    def room_for(self, now: float, incoming: int) -> bool:
        """True when writes of ``incoming`` bytes at ``now`` need nothing of this room: no expiry due, no
        history over its cap, and room under max_bytes beside the jobs already in the transaction."""
        counters = self._db.counters
        return (now < self._next_expire
                and counters.events_bytes - counters.outbox_bytes <= self._history.max_bytes
                and counters.used + self._db.staged.events_bytes + incoming <= counters.outbox.max_bytes)

    def make_room(self, db: sqlite3.Connection, delta: Delta, incoming: int) -> None:
        """Free space for ``incoming`` bytes: history first, then the outbox policy."""
        self.trim_history(db, delta)
        counters = self._db.counters
        outbox = counters.outbox
        # The jobs before this one in a shared transaction (edged.store.group) hold rows too.
        staged = self._db.staged
        need = counters.used + staged.events_bytes + delta.events_bytes + incoming - outbox.max_bytes
        if need <= 0:
            return

        def take(size: int, created_at: float) -> bool:
            nonlocal need
            if need <= 0:
                return False
            need -= size
            return True

        # Only when some events are out of the outbox: a full offline backlog has no history to look for.
        if (counters.events_bytes + staged.events_bytes + delta.events_bytes
                > counters.outbox_bytes + staged.outbox_bytes + delta.outbox_bytes):
            delete_oldest(db, delta, "history", take, "max_bytes")
        if need > 0:
            if outbox.on_full == "reject_new":
                raise OutboxFull(f"outbox at its cap of {outbox.max_bytes} bytes ({counters.queued + staged.queued} "
                                 "events queued); nothing stored (on_full = reject_new)")
            delete_oldest(db, delta, "outbox", take, "max_bytes")
        self.prune_inputs(db)

    def trim_history(self, db: sqlite3.Connection, delta: Delta) -> None:
        """Hold the history to ``history.max_bytes``: everything held but the outbox counts as history here
        (events waiting only for MQTT too: a bound, never an undercount)."""
        counters = self._db.counters
        over = (counters.events_bytes + delta.events_bytes - counters.outbox_bytes - delta.outbox_bytes
                - self._history.max_bytes)
        if over <= 0:
            return

        def take(size: int, created_at: float) -> bool:
            nonlocal over
            if over <= 0:
                return False
            over -= size
            return True

        delete_oldest(db, delta, "history", take, "history.max_bytes")

    def expire(self, db: sqlite3.Connection, delta: Delta, now: float) -> None:
        """Drop rows older than max_age (outbox rows count as evictions). Throttled; assumes a sane clock."""
        if now < self._next_expire:
            return
        self._next_expire = now + EXPIRE_EVERY
        self._vacuum_due = True
        cutoff = now - self._db.counters.outbox.max_age
        history_cutoff = now - self._history.max_age

        def old(size: int, created_at: float) -> bool:
            return created_at < cutoff

        def old_history(size: int, created_at: float) -> bool:
            return created_at < history_cutoff

        delete_oldest(db, delta, "outbox", old, "max_age")
        delete_oldest(db, delta, "mqtt", old, "max_age")
        counters = self._db.counters
        # Only when some events are out of the outbox: a full offline backlog has no history to look for.
        if counters.events_bytes + delta.events_bytes > counters.outbox_bytes + delta.outbox_bytes:
            delete_oldest(db, delta, "history", old_history, "history.max_age")
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
        oldest = db.execute("SELECT seq FROM events ORDER BY seq LIMIT 1").fetchone()
        if oldest is not None:
            # Inputs are in commit order, like their events: the ones to go are a prefix.
            db.execute("DELETE FROM inputs WHERE id < COALESCE((SELECT id FROM inputs WHERE first_seq + events > ? "
                       "ORDER BY id LIMIT 1), (SELECT MAX(id) + 1 FROM inputs))", (oldest[0],))

    def vacuum(self) -> None:
        """Give free pages back to the filesystem (after a backlog drained), at most once per expiry pass."""
        if not self._vacuum_due:
            return
        self._vacuum_due = False
        db = self._db.con
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free > VACUUM_FREE_PAGES:
            db.execute(f"PRAGMA incremental_vacuum({free - VACUUM_FREE_PAGES // 2})").fetchall()
