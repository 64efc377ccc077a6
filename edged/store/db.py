"""The store's database: one SQLite connection (WAL, synchronous=FULL), its schema, and the writer thread.

Every statement runs on one thread (a single-thread executor); the asyncio side awaits
``asyncio.wrap_future`` of its jobs. ``commit`` queues a write that shares its transaction and fsync with
the writes queued beside it (edged.store.group); ``transaction`` runs one on the writer thread at once.
Either way a job's counter changes apply only once its rows are on disk (edged.store.counters).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from edged.errors import EdgedError
from edged.store.counters import Counters, Delta
from edged.store.group import Batch, Job, JobQueue, Many, Settle, fail
from edged.store.migrate import migrate_v1, migrate_v2, migrate_v3

__all__ = ["SCHEMA", "Database", "StoreError", "chunks", "marks"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

SCHEMA_VERSION = 4
_ID_CHUNK = 500

# Each result is stored once: its events row (id as 16 bytes, body compressed: edged.store.codec); an
# outbox row only points at it. Every index serves a query named beside it; nothing else is indexed.
SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY,
    frame INTEGER NOT NULL,           -- codec.frame_key(camera, sha256)
    received_at REAL NOT NULL,
    first_seq INTEGER NOT NULL,       -- its events are seq first_seq .. first_seq + events - 1
    events INTEGER NOT NULL
);
-- recent_input (dedupe)
CREATE INDEX IF NOT EXISTS inputs_by_frame ON inputs (frame);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,                 -- UUIDv7, 16 bytes
    camera TEXT NOT NULL,
    function TEXT NOT NULL,
    kind INTEGER NOT NULL,            -- 0 result, 1 error
    data BLOB NOT NULL,               -- codec.pack(JSON body without "id")
    body BLOB,
    content_type TEXT,
    created_at REAL NOT NULL,
    mqtt_pending INTEGER NOT NULL DEFAULT 0
);
-- outbox_ack / outbox_retry / outbox_dead / mqtt_published (by id)
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (id);
-- mqtt_pending (only rows still to publish are in it)
CREATE INDEX IF NOT EXISTS events_mqtt ON events (seq) WHERE mqtt_pending = 1;
-- schema 4: GET /v1/events?camera= (edged.store.history), newest first: the rowid (seq) orders each camera
CREATE INDEX IF NOT EXISTS events_by_camera ON events (camera);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,          -- the event's seq
    state INTEGER NOT NULL DEFAULT 0, -- 0 queued, 1 dead letter
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    with_image INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
-- outbox_batch: cameras whose first queued row waits (only rows ever retried are in it)
CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox (not_before) WHERE state = 0 AND not_before > 0;
-- outbox_state: the newest dead letters
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (seq) WHERE state = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
-- schema 3: MQTT frames that started processing and were not committed yet (edged.store.attempts)
CREATE TABLE IF NOT EXISTS attempts (
    frame INTEGER PRIMARY KEY,        -- codec.frame_key(camera, sha256)
    n INTEGER NOT NULL,               -- attempts started
    at REAL NOT NULL                  -- the last one (pruning)
);
"""

class StoreError(EdgedError):
    """The database failed (disk full, I/O error, closed store); nothing of the failed job was committed."""

    code = "store_error"
    http_status = 503


def chunks(ids: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``ids`` in pieces small enough for one statement's parameters."""
    for i in range(0, len(ids), _ID_CHUNK):
        yield ids[i:i + _ID_CHUNK]


def marks(ids: Sequence[Any]) -> str:
    """``?,?,…``: only placeholders are ever formatted into SQL; values go as parameters."""
    return ",".join("?" * len(ids))


class Database:
    """The connection, the writer thread and the counters kept beside them."""

    def __init__(self, path: Path, counters: Counters) -> None:
        self.path = path
        self.counters = counters
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None
        self._jobs = JobQueue()
        self._batch = Batch(counters, self._store_error)

    # -- the writer thread -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._executor is not None:
            raise RuntimeError("store already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged.store")

    @property
    def started(self) -> bool:
        return self._executor is not None

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def submit(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Run ``fn`` on the writer thread; sqlite3 errors come back as StoreError."""
        if self._executor is None:
            raise StoreError("the store is not open")

        def job() -> _T:
            try:
                return fn(*args, **kwargs)
            except sqlite3.Error as exc:
                raise self._store_error(exc) from exc

        return self._executor.submit(job)

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        error = StoreError(f"database error in {self.path}: {exc}")
        error.__cause__ = exc
        return error

    # -- group commit ------------------------------------------------------------------------------------

    async def commit(self, body: Callable[[sqlite3.Connection, Delta], _T], *, size: int = 0,
                     settle: Settle | None = None, durable: bool = True, many: Many | None = None,
                     item: Any = None) -> _T:
        """Run ``body`` in a transaction shared with the jobs queued beside it, each in its own savepoint
        (edged.store.group; or ``many`` writes it with its neighbours, from ``item``); return once that
        transaction is on disk, or raise the body's error. ``settle`` runs on the writer thread just
        before. Cancelled before it ran: nothing is written. Not ``durable``: survives a crash of the
        process, fsynced with the next durable transaction."""
        waiter: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        if self._jobs.put(Job(body, size, settle, waiter, durable, many=many, item=item)):
            self._submit_drain()
        return await waiter

    def _submit_drain(self) -> None:
        try:
            self.submit(self._drain)
        except (StoreError, RuntimeError) as exc:  # closed, or the executor shutting down
            fail(self._jobs.abandon(), exc if isinstance(exc, StoreError) else StoreError(f"store closing: {exc}"))

    def _drain(self) -> None:
        """The writer job of ``commit``: commit a batch of what is queued, and leave a drain due for the rest."""
        batch, more = self._jobs.take()
        try:
            if batch:
                try:
                    con = self.con
                except StoreError as exc:
                    fail(batch, exc)
                else:
                    self._batch.run(con, batch)
        finally:
            if more:
                self._submit_drain()

    @property
    def waiting(self) -> int:
        """Jobs queued for the writer and not taken yet."""
        return len(self._jobs)

    @property
    def staged(self) -> Delta:
        """Counter changes of the jobs already in the open transaction (their rows count against the caps)."""
        return self._batch.staged

    # -- the connection (writer thread only) ----------------------------------------------------------

    @property
    def con(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError("the store is not open")
        return self._con

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        try:
            # auto_vacuum only takes effect before the first table exists; harmless afterwards.
            con.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            # FULL: a commit is on disk before commit_input returns, so MQTT may ack after it.
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA journal_size_limit = 67108864")
            con.execute("PRAGMA temp_store = MEMORY")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than this edged ({SCHEMA_VERSION})")
            if version == 1:
                try:
                    migrate_v1(con, SCHEMA)
                except (ValueError, KeyError, TypeError) as exc:
                    raise StoreError(f"{self.path}: cannot migrate from schema 1 (left as it was): {exc}") from exc
                version = 2
            if version == 2:
                migrate_v2(con, SCHEMA)
                version = 3
            if version == 3:
                migrate_v3(con, SCHEMA)
            else:
                con.executescript(SCHEMA)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            con.close()
            raise
        self._con = con
        self.counters.load(con)
        log.info("store %s open: %d queued, %d dead letters, %d bytes", self.path, self.counters.queued,
                 self.counters.dead, self.counters.outbox_bytes)

    def close(self) -> None:
        if self._con is not None:
            self.counters.flush_eviction_log(force=True)
            try:
                self._con.execute("PRAGMA optimize")
            finally:
                self._con.close()
                self._con = None

    def transaction(self, body: Callable[[sqlite3.Connection, Delta], _T]) -> _T:
        """Run ``body`` now, alone in one IMMEDIATE transaction (writer thread); its counter changes apply
        only once it committed."""
        job = Job(body)
        self._batch.run(self.con, [job])
        if job.error is not None:
            raise job.error
        return cast(_T, job.result)  # set by the body, which succeeded

