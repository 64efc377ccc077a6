"""Attempts: how often each MQTT frame started processing without being committed (poison frames).

One row per frame (``codec.frame_key`` of camera and sha256) in ``attempts``. ``count`` writes it, and
returns only once it is in the database file's WAL, before the frame's functions run: there for any crash
of the process (a poison frame crashes edged, not the machine), fsynced with the next durable commit, not
on its own (edged.store.group, not ``durable``). The transaction that commits the frame deletes it
(``forget_in``). A frame whose row says it was cut short too often is set aside by the MQTT side
(edged.ingest.poison).

Counts are writer jobs of the group commit (edged.store.group): the attempts of frames taken at once,
and the commits of other frames queued beside them, share one transaction, so under load most attempts
cost no fsync of their own. The counts are mirrored in memory (loaded at open, changed only after a
commit), so ``tried`` costs no trip to the writer thread. Rows of frames that never came back are pruned
after ``KEEP_SECONDS``; the table never holds more than ``MAX_ROWS``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from edged.store.codec import frame_key
from edged.store.counters import Delta
from edged.store.db import Database

__all__ = ["KEEP_SECONDS", "MAX_ROWS", "Attempts"]

_T = TypeVar("_T")

#: A frame not seen again for this long will not be redelivered (the default MQTT session expiry).
KEEP_SECONDS = 86400.0
#: At most this many rows (a crash leaves at most ``mqtt.max_inflight`` + a few behind).
MAX_ROWS = 10_000
#: Pruning runs at most this often (seconds of store time).
PRUNE_EVERY = 60.0


class Attempts:
    """The ``attempts`` table and its mirror in memory; the public coroutines are wrapped by the Store."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        #: frame key -> attempts on disk. Replaced or changed on the writer thread, read anywhere.
        self._counts: dict[int, int] = {}
        #: Keys written by counts whose transaction has not ended yet (not mirrored yet; writer thread).
        self._unsettled: set[int] = set()
        self._next_prune = 0.0

    def load(self, db: sqlite3.Connection) -> None:
        """Prune, then read the rows of an opened database (writer thread)."""
        self._counts = self._prune(db)

    def tried(self, camera: str, sha256: str) -> int:
        """Times this frame started processing and was not committed since (0 for most frames)."""
        return self._counts.get(frame_key(camera, sha256), 0)

    async def count(self, camera: str, sha256: str, step: int = 1) -> int:
        """Add ``step`` to this frame's attempts, durably (-1 takes back one that ended without a crash);
        the new count. A count that falls to 0 deletes the row."""
        counted = await self.count_unless(camera, sha256, step)
        assert isinstance(counted, int)
        return counted

    async def count_unless(self, camera: str, sha256: str, step: int = 1,
                           found: Callable[[sqlite3.Connection], _T | None] | None = None) -> int | _T:
        """``count``, in one writer job with a look-up before it: when ``found(db)`` returns something, that is
        returned and nothing is counted (the MQTT dedupe look-up and the attempt share one trip)."""
        key = frame_key(camera, sha256)
        written = 0
        pruned: dict[int, int] | None = None
        skipped = False

        def body(db: sqlite3.Connection, delta: Delta) -> int | _T:
            nonlocal written, pruned, skipped
            if found is not None and (earlier := found(db)) is not None:
                skipped = True
                return earlier
            self._unsettled.add(key)
            now = self._clock()
            # Read from the table, not the mirror: a job before this one in the batch may have changed it.
            row = db.execute("SELECT n FROM attempts WHERE frame = ?", (key,)).fetchone()
            written = max(0, (row[0] if row is not None else 0) + step)
            if written:
                db.execute("INSERT INTO attempts (frame, n, at) VALUES (?, ?, ?) ON CONFLICT (frame) "
                           "DO UPDATE SET n = excluded.n, at = excluded.at", (key, written, now))
            elif row is not None:
                db.execute("DELETE FROM attempts WHERE frame = ?", (key,))
            if now >= self._next_prune:
                pruned = self._prune(db)
            return written

        def settle(error: BaseException | None) -> None:
            # Jobs settle in the order they ran, so the mirror ends as the table does.
            if skipped:
                return
            self._unsettled.discard(key)
            if error is not None:
                return
            if pruned is not None:
                self._counts = pruned  # the rows as this job left them, its own included
            elif written:
                self._counts[key] = written
            else:
                self._counts.pop(key, None)

        return await self._db.commit(body, settle=settle, durable=False)

    def forget_in(self, db: sqlite3.Connection, key: int) -> int | None:
        """Delete the row of frame ``key`` (codec.frame_key) inside the caller's transaction; give what this
        returns to ``forgotten`` once that transaction committed."""
        if key not in self._counts and key not in self._unsettled:
            return None  # most frames: no row, and no statement spent finding that out
        db.execute("DELETE FROM attempts WHERE frame = ?", (key,))
        return key

    def forgotten(self, key: int | None) -> None:
        if key is not None:
            self._counts.pop(key, None)

    def _prune(self, db: sqlite3.Connection) -> dict[int, int]:
        """Drop old rows and those past MAX_ROWS (oldest first); the rows left, as the mirror should be."""
        now = self._clock()
        self._next_prune = now + PRUNE_EVERY
        db.execute("DELETE FROM attempts WHERE at < ?", (now - KEEP_SECONDS,))
        db.execute("DELETE FROM attempts WHERE frame IN (SELECT frame FROM attempts ORDER BY at DESC "
                   "LIMIT -1 OFFSET ?)", (MAX_ROWS,))
        return dict(db.execute("SELECT frame, n FROM attempts").fetchall())

