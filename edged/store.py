"""The local store: SQLite (WAL, synchronous=FULL) holding inputs, events and the cloud outbox.

One writer thread (a single-thread executor owned by the Store) runs every statement; the asyncio side
awaits ``asyncio.wrap_future`` of its jobs. docs/STORE.md is the contract.

Space: the event data the store holds (events rows, outbox CloudEvents) stays within
``outbox.max_bytes``. History (events no longer waiting for anything) goes first, silently; then the
outbox policy decides: ``drop_oldest`` evicts the oldest outbox rows (counted, logged, in
``outbox_status``), ``reject_new`` raises OutboxFull and writes nothing. Rows older than
``outbox.max_age`` are expired in either mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from edged.errors import EdgedError, OutboxFull
from edged.events import NewEvent, StoredEvent, new_event_id, rfc3339
from edged.metrics import Metrics
from edged.settings import OutboxSettings, SyncSettings

__all__ = ["OutboxEntry", "Store", "StoreError"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

SCHEMA_VERSION = 1
QUEUED, DEAD = 0, 1
#: Age expiry and history pruning run at most this often (seconds of store time).
EXPIRE_EVERY = 5.0
#: Rows looked at per step when freeing space or expiring (bounded work per statement).
SCAN_STEP = 500
#: Free pages kept for reuse; above this many the file is shrunk (incremental vacuum).
VACUUM_FREE_PAGES = 4096
#: Dead letters listed by outbox_status.
DEAD_LISTED = 20
#: Evictions are logged at once, then summed up at most this often (seconds), so none goes unlogged.
EVICTION_LOG_EVERY = 10.0
_ID_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY,
    transport TEXT NOT NULL,
    camera TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    correlation BLOB
);
CREATE INDEX IF NOT EXISTS inputs_by_frame ON inputs (camera, sha256);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    input_id INTEGER NOT NULL,
    camera TEXT NOT NULL,
    function TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    body BLOB,
    content_type TEXT,
    created_at REAL NOT NULL,
    bytes INTEGER NOT NULL,
    mqtt_pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_input ON events (input_id);
CREATE INDEX IF NOT EXISTS events_mqtt ON events (seq) WHERE mqtt_pending = 1;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    function TEXT NOT NULL,
    cloudevent BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_queued ON outbox (seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox (not_before) WHERE state = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

_SELECT_EVENTS = "SELECT id, seq, camera, function, kind, data, body, content_type, created_at FROM events "


class StoreError(EdgedError):
    """The database failed (disk full, I/O error, closed store); nothing of the failed job was committed."""

    code = "store_error"
    http_status = 503


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued CloudEvent, ready to publish."""

    id: str
    seq: int
    camera: str
    function: str
    cloudevent: bytes
    attempts: int


@dataclass(slots=True)
class _Prepared:
    id: str
    camera: str
    event: NewEvent
    data: dict[str, Any]
    data_json: str
    event_bytes: int
    cloudevent: bytes | None
    oversize: int = 0


@dataclass(slots=True)
class _Delta:
    """Counter changes of one transaction, applied only once it committed."""

    queued: int = 0
    dead: int = 0
    outbox_bytes: int = 0
    events_bytes: int = 0
    evicted: dict[str, int] = field(default_factory=dict)
    evicted_ids: list[str] = field(default_factory=list)

    def evict(self, reason: str, n: int, ids: Sequence[str] = ()) -> None:
        if n:
            self.evicted[reason] = self.evicted.get(reason, 0) + n
            self.evicted_ids.extend(ids)


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(ids), _ID_CHUNK):
        yield ids[i:i + _ID_CHUNK]


def _marks(ids: Sequence[str]) -> str:
    """``?,?,…``: only placeholders are ever formatted into SQL; values go as parameters."""
    return ",".join("?" * len(ids))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Store:
    """The SQLite store; see docs/STORE.md. Use ``async with`` (or open_sync/close_sync without a loop)."""

    def __init__(self, path: Path, device_id: str, outbox: OutboxSettings, sync: SyncSettings,
                 metrics: Metrics | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._device_id = device_id
        self._outbox = outbox
        self._sync = sync
        self._metrics = metrics
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None
        self._queued_event = asyncio.Event()
        # Counters below are touched only on the writer thread (and read anywhere: ints are atomic).
        self._queued = 0
        self._dead = 0
        self._outbox_bytes = 0
        self._events_bytes = 0
        self._evicted_total = 0
        self._evicted_by_reason: dict[str, int] = {}
        self._next_expire = 0.0
        self._vacuum_due = False
        self._unlogged: dict[str, int] = {}
        self._next_eviction_log = 0.0
        self.last_sync_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        self._start()
        try:
            await self._run(self._open)
        except BaseException:
            self._stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._executor is not None:
            await asyncio.wrap_future(self._executor.submit(self._close))
        self._stop()

    def open_sync(self) -> None:
        """Open without an event loop (CLI, benchmarks). The async methods then work under any loop."""
        self._start()
        try:
            self._submit(self._open).result()
        except BaseException:
            self._stop()
            raise

    def close_sync(self) -> None:
        if self._executor is not None:
            self._executor.submit(self._close).result()
        self._stop()

    def _start(self) -> None:
        if self._executor is not None:
            raise RuntimeError("store already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged.store")

    def _stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _submit(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Any:
        if self._executor is None:
            raise StoreError("the store is not open")

        def job() -> _T:
            try:
                return fn(*args, **kwargs)
            except sqlite3.Error as exc:
                raise StoreError(f"database error in {self.path}: {exc}") from exc

        return self._executor.submit(job)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        result: _T = await asyncio.wrap_future(self._submit(fn, *args, **kwargs))
        return result

    @property
    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError("the store is not open")
        return self._con

    def _open(self) -> None:
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
            con.executescript(_SCHEMA)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            con.close()
            raise
        self._con = con
        self._load_counters()
        log.info("store %s open: %d queued, %d dead letters, %d bytes", self.path, self._queued, self._dead,
                 self._outbox_bytes)

    def _close(self) -> None:
        if self._con is not None:
            self._flush_eviction_log(force=True)
            try:
                self._con.execute("PRAGMA optimize")
            finally:
                self._con.close()
                self._con = None

    def _load_counters(self) -> None:
        db = self._db
        for state, n, size in db.execute("SELECT state, COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox GROUP BY state"):
            if state == QUEUED:
                self._queued = n
            else:
                self._dead = n
            self._outbox_bytes += size
        self._events_bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM events").fetchone()[0]
        for key, value in db.execute("SELECT key, value FROM meta WHERE key LIKE 'evicted.%'"):
            self._evicted_by_reason[key.removeprefix("evicted.")] = int(value)
        self._evicted_total = sum(self._evicted_by_reason.values())
        self._publish_gauges()

    # -- transactions -----------------------------------------------------------------------------------

    def _transaction(self, body: Callable[[sqlite3.Connection, _Delta], _T]) -> _T:
        db = self._db
        delta = _Delta()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db, delta)
            for reason, n in delta.evicted.items():
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                           "SET value = value + excluded.value", (f"evicted.{reason}", n))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._apply(delta)
        return result

    def _apply(self, delta: _Delta) -> None:
        self._flush_eviction_log()
        self._queued += delta.queued
        self._dead += delta.dead
        self._outbox_bytes += delta.outbox_bytes
        self._events_bytes += delta.events_bytes
        for reason, n in delta.evicted.items():
            self._evicted_by_reason[reason] = self._evicted_by_reason.get(reason, 0) + n
            self._evicted_total += n
            self._unlogged[reason] = self._unlogged.get(reason, 0) + n
            if self._metrics is not None:
                self._metrics.outbox_evicted.labels(reason).inc(n)
        if delta.evicted:
            self._flush_eviction_log(first_ids=delta.evicted_ids)
        self._publish_gauges()

    def _flush_eviction_log(self, first_ids: Sequence[str] = (), force: bool = False) -> None:
        now = time.monotonic()
        if not self._unlogged or (now < self._next_eviction_log and not force):
            return
        summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._unlogged.items()))
        sample = f", e.g. {', '.join(first_ids[:3])}" if first_ids else ""
        log.warning("outbox: evicted %d events unsent (%s%s); %d evicted in total (max_bytes=%d, max_age=%ss, "
                    "on_full=%s)", sum(self._unlogged.values()), summary, sample, self._evicted_total,
                    self._outbox.max_bytes, self._outbox.max_age, self._outbox.on_full)
        self._unlogged.clear()
        self._next_eviction_log = now + EVICTION_LOG_EVERY

    def _publish_gauges(self) -> None:
        if self._metrics is None:
            return
        self._metrics.outbox_events.labels("queued").set(self._queued)
        self._metrics.outbox_events.labels("dead").set(self._dead)
        self._metrics.outbox_bytes.set(self._outbox_bytes)

    # -- ingest side ------------------------------------------------------------------------------------

    async def commit_input(self, *, transport: str, camera: str, sha256: str, received_at: float,
                           correlation: bytes | None, events: list[NewEvent],
                           publish_mqtt: bool) -> list[StoredEvent]:
        """Store one input and its events, and queue them for the cloud, in ONE durable transaction.

        Raises OutboxFull (nothing written) when the outbox is full and on_full is reject_new.
        """
        stored = await self._run(self._commit_input, transport, camera, sha256, received_at, correlation,
                                 events, publish_mqtt)
        self._queued_event.set()
        return stored

    def _prepare(self, event: NewEvent, camera: str, now: float) -> _Prepared:
        event_id = new_event_id()
        data = {"id": event_id, **event.data}
        data_json = _dumps(data)
        event_bytes = len(data_json.encode()) + (len(event.body) if event.body is not None else 0)
        prepared = _Prepared(event_id, camera, event, data, data_json, event_bytes, None)
        kind = "result" if event.kind == "result" else "error"
        ce_type = f"io.edged.{kind}.{event.function or ('ingest' if kind == 'error' else 'unknown')}"
        envelope: dict[str, Any] = {
            "specversion": "1.0", "id": event_id, "source": f"edged/{self._device_id}", "type": ce_type,
            "time": rfc3339(now), "datacontenttype": "application/json", "subject": camera, "data": data,
        }
        limit = self._sync.max_event_bytes
        image = data.get("image")
        if self._sync.include_images and event.body is not None and isinstance(image, dict):
            with_image = {**data, "image": {**image, "data_base64": base64.b64encode(event.body).decode("ascii")}}
            encoded = _dumps({**envelope, "data": with_image}).encode()
            if len(encoded) <= limit:
                prepared.cloudevent = encoded
                return prepared
            log.info("event %s: image of %d bytes left out of the cloud event (sync.max_event_bytes=%d)",
                     event_id, len(event.body), limit)
        encoded = _dumps(envelope).encode()
        if len(encoded) > limit:
            prepared.oversize = len(encoded)
        else:
            prepared.cloudevent = encoded
        return prepared

    def _commit_input(self, transport: str, camera: str, sha256: str, received_at: float,
                      correlation: bytes | None, events: list[NewEvent], publish_mqtt: bool) -> list[StoredEvent]:
        now = self._clock()
        prepared = [self._prepare(ev, camera, now) for ev in events]

        def body(db: sqlite3.Connection, delta: _Delta) -> list[StoredEvent]:
            self._expire(db, delta, now)
            incoming = sum(p.event_bytes + (len(p.cloudevent) if p.cloudevent is not None else 0)
                           for p in prepared)
            self._make_room(db, delta, incoming)
            cur = db.execute("INSERT INTO inputs (transport, camera, sha256, received_at, correlation) "
                             "VALUES (?, ?, ?, ?, ?)", (transport, camera, sha256, received_at, correlation))
            input_id = cur.lastrowid
            stored: list[StoredEvent] = []
            for p in prepared:
                ev = p.event
                cur = db.execute(
                    "INSERT INTO events (id, input_id, camera, function, kind, data, body, content_type, "
                    "created_at, bytes, mqtt_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.id, input_id, camera, ev.function, ev.kind, p.data_json, ev.body, ev.content_type, now,
                     p.event_bytes, int(publish_mqtt)))
                seq = cur.lastrowid
                assert seq is not None
                delta.events_bytes += p.event_bytes
                if p.cloudevent is not None:
                    db.execute("INSERT INTO outbox (seq, id, camera, function, cloudevent, bytes, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (seq, p.id, camera, ev.function, p.cloudevent, len(p.cloudevent), now))
                    delta.queued += 1
                    delta.outbox_bytes += len(p.cloudevent)
                elif p.oversize:
                    log.warning("event %s: cloud event of %d bytes is over sync.max_event_bytes=%d: not synced",
                                p.id, p.oversize, self._sync.max_event_bytes)
                    delta.evict("oversize", 1, [p.id])
                stored.append(StoredEvent(p.id, seq, camera, ev.function, ev.kind, p.data, ev.body,
                                          ev.content_type, now))
            return stored

        try:
            return self._transaction(body)
        except OutboxFull:
            if self._metrics is not None:
                self._metrics.outbox_rejected.inc()
            raise
        finally:
            self._vacuum()

    def _make_room(self, db: sqlite3.Connection, delta: _Delta, incoming: int) -> None:
        """Free space for ``incoming`` bytes: history first, then the outbox policy."""
        cap = self._outbox.max_bytes
        used = self._events_bytes + self._outbox_bytes + delta.events_bytes + delta.outbox_bytes

        def over() -> int:
            return used + incoming - cap

        if over() <= 0:
            return
        while over() > 0:
            rows = db.execute("SELECT seq, bytes FROM events WHERE mqtt_pending = 0 ORDER BY seq LIMIT ?",
                              (SCAN_STEP,)).fetchall()
            if not rows:
                break
            take, freed = [], 0
            for seq, size in rows:
                if freed >= over():
                    break
                take.append(seq)
                freed += size
            db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in take])
            delta.events_bytes -= freed
            used -= freed
        if over() > 0:
            if self._outbox.on_full == "reject_new":
                raise OutboxFull(f"outbox at its cap of {cap} bytes ({self._queued} events queued); "
                                 "nothing stored (on_full = reject_new)")
            while over() > 0:
                rows = db.execute("SELECT seq, id, bytes, state FROM outbox ORDER BY seq LIMIT ?",
                                  (SCAN_STEP,)).fetchall()
                if not rows:
                    break
                take_rows = []
                freed = 0
                for row in rows:
                    if freed >= over():
                        break
                    take_rows.append(row)
                    freed += row[2]
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in take_rows])
                self._count_removed(delta, take_rows, "max_bytes")
                used -= freed
        self._prune_inputs(db)

    def _count_removed(self, delta: _Delta, rows: Sequence[tuple[Any, ...]], reason: str) -> None:
        """Account for deleted outbox rows given as (seq, id, bytes, state)."""
        for _, _, size, state in rows:
            delta.outbox_bytes -= size
            if state == QUEUED:
                delta.queued -= 1
            else:
                delta.dead -= 1
        delta.evict(reason, len(rows), [r[1] for r in rows])

    def _vacuum(self) -> None:
        """Give free pages back to the filesystem (after a backlog drained), at most once per expiry pass."""
        if not self._vacuum_due:
            return
        self._vacuum_due = False
        db = self._db
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free > VACUUM_FREE_PAGES:
            db.execute(f"PRAGMA incremental_vacuum({free - VACUUM_FREE_PAGES // 2})").fetchall()

    def _prune_inputs(self, db: sqlite3.Connection) -> None:
        oldest = db.execute("SELECT input_id FROM events ORDER BY seq LIMIT 1").fetchone()
        if oldest is not None:
            db.execute("DELETE FROM inputs WHERE id < ?", (oldest[0],))

    def _expire(self, db: sqlite3.Connection, delta: _Delta, now: float) -> None:
        """Drop rows older than max_age (outbox rows count as evictions). Throttled; assumes a sane clock."""
        if now < self._next_expire:
            return
        self._next_expire = now + EXPIRE_EVERY
        self._vacuum_due = True
        cutoff = now - self._outbox.max_age
        while True:
            rows = db.execute("SELECT seq, id, bytes, state, created_at FROM outbox ORDER BY seq LIMIT ?",
                              (SCAN_STEP,)).fetchall()
            old = [r[:4] for r in rows if r[4] < cutoff]
            if not old:
                break
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in old])
            self._count_removed(delta, old, "max_age")
            if len(old) < len(rows):
                break
        while True:
            rows = db.execute("SELECT seq, bytes, created_at, mqtt_pending FROM events ORDER BY seq LIMIT ?",
                              (SCAN_STEP,)).fetchall()
            old = [r for r in rows if r[2] < cutoff]
            if not old:
                break
            pending = sum(r[3] for r in old)
            if pending:
                log.warning("store: %d events older than max_age=%ss dropped before they were published on MQTT",
                            pending, self._outbox.max_age)
            db.executemany("DELETE FROM events WHERE seq = ?", [(r[0],) for r in old])
            delta.events_bytes -= sum(r[1] for r in old)
            if len(old) < len(rows):
                break
        if db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
            db.execute("DELETE FROM inputs WHERE received_at < ?", (cutoff,))
        else:
            self._prune_inputs(db)

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        """Events of the newest input with this camera and sha256 received within ``window_s``, else None."""
        return await self._run(self._recent_input, camera, sha256, window_s)

    def _recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        db = self._db
        row = db.execute("SELECT id FROM inputs WHERE camera = ? AND sha256 = ? AND received_at >= ? "
                         "ORDER BY id DESC LIMIT 1", (camera, sha256, self._clock() - window_s)).fetchone()
        if row is None:
            return None
        rows = db.execute(_SELECT_EVENTS + "WHERE input_id = ? ORDER BY seq", (row[0],))
        return [self._stored(r) for r in rows]

    @staticmethod
    def _stored(row: tuple[Any, ...]) -> StoredEvent:
        event_id, seq, camera, function, kind, data, body, content_type, created_at = row
        return StoredEvent(event_id, seq, camera, function, kind, json.loads(data), body, content_type, created_at)

    async def mqtt_pending(self, limit: int) -> list[StoredEvent]:
        """Events still to publish on MQTT, oldest first."""
        return await self._run(self._mqtt_pending, limit)

    def _mqtt_pending(self, limit: int) -> list[StoredEvent]:
        rows = self._db.execute(_SELECT_EVENTS + "WHERE mqtt_pending = 1 ORDER BY seq LIMIT ?", (limit,))
        return [self._stored(r) for r in rows]

    async def mqtt_published(self, ids: Sequence[str]) -> None:
        """Clear the "to publish on MQTT" mark of these events."""
        if ids:
            await self._run(self._update_ids, "UPDATE events SET mqtt_pending = 0 WHERE id IN ({})", list(ids), ())

    def _update_ids(self, sql: str, ids: list[str], params: tuple[Any, ...]) -> None:
        def body(db: sqlite3.Connection, delta: _Delta) -> None:
            for chunk in _chunks(ids):
                db.execute(sql.format(_marks(chunk)), (*params, *chunk))

        self._transaction(body)

    # -- cloud sync side --------------------------------------------------------------------------------

    async def outbox_batch(self, limit: int, now: float) -> list[OutboxEntry]:
        """Queued rows ready at ``now``, by seq, never passing an earlier row of the same camera that waits."""
        # Cleared before reading, so a commit racing with this read wakes the next wait_queued().
        self._queued_event.clear()
        return await self._run(self._outbox_batch, limit, now)

    def _outbox_batch(self, limit: int, now: float) -> list[OutboxEntry]:
        db = self._db
        # Expiry follows the store's clock; ``now`` only decides which retries are due.
        clock = self._clock()
        if clock >= self._next_expire:
            self._transaction(lambda db, delta: self._expire(db, delta, clock))
            self._vacuum()
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

    async def wait_queued(self) -> None:
        """Return once something may have been queued since the last outbox_batch (callers bound the wait)."""
        await self._queued_event.wait()

    async def outbox_ack(self, ids: Sequence[str]) -> None:
        """The sidecar accepted these events (2xx): delete them."""
        if ids:
            await self._run(self._remove, list(ids))

    def _remove(self, ids: list[str]) -> None:
        def body(db: sqlite3.Connection, delta: _Delta) -> None:
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                # No DELETE ... RETURNING: Debian 11's SQLite (3.34) predates it.
                for size, state in db.execute(f"SELECT bytes, state FROM outbox WHERE id IN ({marks})",  # noqa: S608
                                              chunk):
                    delta.outbox_bytes -= size
                    if state == QUEUED:
                        delta.queued -= 1
                    else:
                        delta.dead -= 1
                db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608

        self._transaction(body)

    async def outbox_retry(self, ids: Sequence[str], error: str, not_before: float) -> None:
        """A transient failure: count the attempt, keep the row, try again from ``not_before``."""
        if ids:
            await self._run(self._update_ids, "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                            "not_before = ? WHERE state = 0 AND id IN ({})", list(ids), (error, not_before))

    async def outbox_dead(self, ids: Sequence[str], reason: str) -> None:
        """A permanent failure: park these rows as dead letters with the reason."""
        if ids:
            await self._run(self._dead_letter, list(ids), reason)

    def _dead_letter(self, ids: list[str], reason: str) -> None:
        def body(db: sqlite3.Connection, delta: _Delta) -> None:
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                sql = f"UPDATE outbox SET state = 1, attempts = attempts + 1, last_error = ? WHERE id IN ({marks})"  # noqa: S608
                n = db.execute(sql + " AND state = 0", (reason, *chunk)).rowcount
                delta.queued -= n
                delta.dead += n

        self._transaction(body)

    async def retry_dead(self) -> int:
        """Put every dead letter back in line (in its original place); return how many."""
        n = await self._run(self._retry_dead)
        if n:
            self._queued_event.set()
        return n

    def _retry_dead(self) -> int:
        def body(db: sqlite3.Connection, delta: _Delta) -> int:
            n = db.execute("UPDATE outbox SET state = 0, attempts = 0, not_before = 0 WHERE state = 1").rowcount
            delta.dead -= n
            delta.queued += n
            return n

        n = self._transaction(body)
        if n:
            log.info("outbox: %d dead letters put back in line", n)
        return n

    def note_sync(self, ok: bool, error: str | None = None) -> None:
        """Record the outcome of a sync attempt for outbox_status (ok: the sidecar accepted something)."""
        now = self._clock()
        if ok:
            self.last_sync_at = now
            if self._metrics is not None:
                self._metrics.sync_last_success.set(now)
        if error is not None:
            self.last_error = error
            self.last_error_at = now

    async def outbox_status(self) -> dict[str, Any]:
        """What GET /v1/outbox shows."""
        return await self._run(self._outbox_status)

    def _outbox_status(self) -> dict[str, Any]:
        db = self._db
        now = self._clock()
        self._flush_eviction_log()
        oldest = db.execute("SELECT created_at FROM outbox WHERE state = 0 ORDER BY seq LIMIT 1").fetchone()
        dead = [
            {"id": r[0], "camera": r[1], "function": r[2], "reason": r[3], "attempts": r[4],
             "created_at": r[5]}
            for r in db.execute("SELECT id, camera, function, last_error, attempts, created_at FROM outbox "
                                "WHERE state = 1 ORDER BY seq DESC LIMIT ?", (DEAD_LISTED,))
        ]
        return {
            "depth": self._queued,
            "bytes": self._outbox_bytes,
            "store_bytes": self._outbox_bytes + self._events_bytes,
            "max_bytes": self._outbox.max_bytes,
            "max_age_s": self._outbox.max_age,
            "on_full": self._outbox.on_full,
            "oldest_age_s": round(now - oldest[0], 3) if oldest is not None else None,
            "dead": self._dead,
            "dead_letters": dead,
            "evicted_total": self._evicted_total,
            "evicted": dict(sorted(self._evicted_by_reason.items())),
            "last_sync_at": self.last_sync_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
