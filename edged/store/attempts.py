"""Attempts: how often each MQTT frame started processing without being committed (poison frames).

One row per frame (``codec.frame_key`` of camera and sha256) in ``attempts``. ``count`` writes it, and
returns only once it is on disk (synchronous=FULL), before the frame's functions run; the transaction
that commits the frame deletes it (``forget_in``). A frame whose row says it was cut short too often
is set aside by the MQTT side (edged.ingest.poison).

The attempts of frames taken at once share one transaction (a group commit): each caller queues its key
and a writer job; the first job to run writes every queued key and wakes their callers, the later ones
find nothing left to do. A commit of another frame takes the queued attempts into its transaction too,
so under load most attempts cost no fsync of their own. The counts are mirrored in memory (loaded at
open, changed only after a commit), so ``tried`` costs no trip to the writer thread. Rows of frames
that never came back are pruned after ``KEEP_SECONDS``; the table never holds more than ``MAX_ROWS``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from edged.store.codec import frame_key
from edged.store.counters import Delta
from edged.store.db import Database, StoreError

__all__ = ["KEEP_SECONDS", "MAX_ROWS", "Attempts", "Written"]

#: A frame not seen again for this long will not be redelivered (the default MQTT session expiry).
KEEP_SECONDS = 86400.0
#: At most this many rows (a crash leaves at most ``mqtt.max_inflight`` + a few behind).
MAX_ROWS = 10_000
#: Pruning runs at most this often (seconds of store time).
PRUNE_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Written:
    """Attempts written in a transaction, settled once it ended."""

    batch: list[tuple[int, int, Future[int]]]
    counts: dict[int, int]
    pruned: dict[int, int] | None


class Attempts:
    """The ``attempts`` table and its mirror in memory; the public coroutines are wrapped by the Store."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        #: frame key -> attempts on disk. Replaced or changed on the writer thread, read anywhere.
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._queued: list[tuple[int, int, Future[int]]] = []
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
        done: Future[int] = Future()
        with self._lock:
            self._queued.append((frame_key(camera, sha256), step, done))
        try:
            self._db.submit(self._write_queued)
        except StoreError:
            with self._lock:
                self._queued = [q for q in self._queued if q[2] is not done]
            raise
        return await asyncio.wrap_future(done)

    def _write_queued(self) -> None:
        """The writer job of ``count``: write what is queued (if a commit did not take it already)."""
        written: list[Written | None] = [None]

        def body(db: sqlite3.Connection, delta: Delta) -> None:
            written[0] = self.write_queued_in(db)

        try:
            self._db.transaction(body)
        except sqlite3.Error as exc:
            error = StoreError(f"database error in {self._db.path}: {exc}")
            error.__cause__ = exc
            self.settle(written[0], error)
        except BaseException as exc:
            self.settle(written[0], StoreError(f"counting attempts failed: {exc!r}"))
            raise
        else:
            self.settle(written[0])

    def write_queued_in(self, db: sqlite3.Connection) -> Written | None:
        """Write the queued attempts inside the caller's transaction (a commit takes them along, saving
        their own fsync); pass what this returns to ``settle`` once the transaction ended."""
        with self._lock:
            batch, self._queued = self._queued, []
        if not batch:
            return None
        now = self._clock()
        counts: dict[int, int] = {}
        for key, step, _ in batch:
            counts[key] = max(0, counts.get(key, self._counts.get(key, 0)) + step)
        db.executemany("INSERT INTO attempts (frame, n, at) VALUES (?, ?, ?) ON CONFLICT (frame) "
                       "DO UPDATE SET n = excluded.n, at = excluded.at",
                       [(key, n, now) for key, n in counts.items() if n > 0])
        db.executemany("DELETE FROM attempts WHERE frame = ?", [(key,) for key, n in counts.items() if n == 0])
        return Written(batch, counts, self._prune(db) if now >= self._next_prune else None)

    def settle(self, written: Written | None, error: StoreError | None = None, *, requeue: bool = False) -> None:
        """After the transaction of ``write_queued_in``: committed (``error`` None), the callers get their
        counts; else they get ``error``, or with ``requeue`` their attempts wait for their own job."""
        if written is None:
            return
        if error is None:
            rows = written.pruned if written.pruned is not None else {**self._counts, **written.counts}
            self._counts = {key: n for key, n in rows.items() if n > 0}
            for key, _, done in written.batch:
                if done.set_running_or_notify_cancel():  # False: its caller was cancelled (shutdown)
                    done.set_result(written.counts[key])
        elif requeue:
            with self._lock:
                self._queued[:0] = written.batch
        else:
            for _, _, done in written.batch:
                if done.set_running_or_notify_cancel():
                    done.set_exception(error)

    def forget_in(self, db: sqlite3.Connection, key: int) -> int | None:
        """Delete the row of frame ``key`` (codec.frame_key) inside the caller's transaction; give what this
        returns to ``forgotten`` once that transaction committed."""
        if key not in self._counts:
            return None
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

