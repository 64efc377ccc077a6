"""Reading the event history back: pages of events (newest first, or oldest first after a seq), one
event, one stored image.

Reads go through a connection of their own on a thread of their own: in WAL mode a reader never blocks
the writer's commits, and a read never waits in line behind them. Every read is bounded: at most
``MAX_LIMIT`` rows come back, and a filter no index serves (function, kind) looks at no more than
``SCAN_WINDOW`` seqs per page, answering a short page with a cursor to go on from. Times are turned into
seq bounds by bisection over the rowid, which relies on commit times growing with seq (one writer, one
clock); the time filter itself is still applied, so a clock step back only makes a page shorter.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edged.events import Kind, StoredEvent
from edged.store.codec import KINDS, id_bytes, id_text, unpack, with_id
from edged.store.db import StoreError

__all__ = ["MAX_LIMIT", "SCAN_WINDOW", "Entry", "HistoryReader", "Image", "Page", "Query"]

_T = TypeVar("_T")

#: Most events one page may hold.
MAX_LIMIT = 500
#: Seqs one page looks at when a filter has no index (function, kind).
SCAN_WINDOW = 20_000

_SELECT = ("SELECT id, seq, camera, function, kind, data, body IS NOT NULL, created_at FROM events ")


@dataclass(frozen=True, slots=True)
class Entry:
    """One event as the history shows it: its body (``data``, with the id) and whether an image is stored."""

    id: str
    seq: int
    camera: str
    function: str
    kind: Kind
    data: dict[str, Any]
    created_at: float
    has_image: bool

    @classmethod
    def of(cls, event: StoredEvent) -> Entry:
        return cls(event.id, event.seq, event.camera, event.function, event.kind, event.data, event.created_at,
                   event.body is not None)


@dataclass(frozen=True, slots=True)
class Query:
    """Which events: every bound is optional; seq bounds are exclusive, ``since`` inclusive, ``until`` not."""

    camera: str | None = None
    function: str | None = None
    kind: Kind | None = None
    after: int | None = None
    before: int | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50

    def matches(self, entry: Entry) -> bool:
        """The filters alone (not the bounds): what the live stream checks."""
        return ((self.camera is None or entry.camera == self.camera)
                and (self.function is None or entry.function == self.function)
                and (self.kind is None or entry.kind == self.kind))


@dataclass(frozen=True, slots=True)
class Page:
    """Events in the order asked for; ``next`` is the seq bound of the next page (None: nothing more)."""

    events: list[Entry]
    next: int | None


@dataclass(frozen=True, slots=True)
class Image:
    body: bytes
    content_type: str


def _entry(row: tuple[Any, ...]) -> Entry:
    raw_id, seq, camera, function, kind, data, has_image, created_at = row
    event_id = id_text(raw_id)
    return Entry(event_id, seq, camera, function, KINDS[kind], json.loads(with_id(event_id, unpack(data))),
                 created_at, bool(has_image))


class HistoryReader:
    """The history's read-only connection and its thread. ``open`` after the writer created the schema."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None

    def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged.store.read")

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.wrap_future(executor.submit(self._disconnect))
            executor.shutdown(wait=False)

    def close_sync(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._disconnect).result()
            executor.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            con = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
            con.execute("PRAGMA query_only = 1")
            self._con = con
        return self._con

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None:
            raise StoreError("the store is not open")

        def job() -> _T:
            try:
                return fn(self._connection(), *args)
            except sqlite3.Error as exc:
                raise StoreError(f"database error reading {self._path}: {exc}") from exc

        return await asyncio.wrap_future(executor.submit(job))

    # -- the public reads ----------------------------------------------------------------------------

    async def page(self, query: Query, *, oldest_first: bool = False) -> Page:
        """Events matching ``query``: newest first (``next`` goes as ``before``), or oldest first (as ``after``)."""
        return await self._run(_page, query, oldest_first)

    async def get(self, event_id: str) -> Entry | None:
        return await self._run(_get, id_bytes(event_id))

    async def image(self, event_id: str) -> Image | None:
        return await self._run(_image, id_bytes(event_id))

    async def seq_of(self, event_id: str) -> int | None:
        return await self._run(_seq_of, id_bytes(event_id))

    async def position_at(self, t: float) -> int:
        """A seq bound (as ``after``) before the first event created at ``t`` or later; 0 when none is held."""
        return await self._run(_position_at, t)


def _position_at(con: sqlite3.Connection, t: float) -> int:
    first, last = con.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
    if first is None:
        return int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'events'")
                   .fetchone()[0])
    return _first_seq_at(con, t, first, last + 1) - 1


def _get(con: sqlite3.Connection, raw_id: bytes) -> Entry | None:
    row = con.execute(_SELECT + "WHERE id = ?", (raw_id,)).fetchone()
    return _entry(row) if row is not None else None


def _image(con: sqlite3.Connection, raw_id: bytes) -> Image | None:
    row = con.execute("SELECT body, content_type FROM events WHERE id = ?", (raw_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    return Image(bytes(row[0]), row[1] or "application/octet-stream")


def _seq_of(con: sqlite3.Connection, raw_id: bytes) -> int | None:
    row = con.execute("SELECT seq FROM events WHERE id = ?", (raw_id,)).fetchone()
    return int(row[0]) if row is not None else None


def _first_seq_at(con: sqlite3.Connection, t: float, lo: int, hi: int) -> int:
    """The smallest position p in [lo, hi] such that every event from p on was created at ``t`` or later."""
    while lo < hi:
        mid = (lo + hi) // 2
        row = con.execute("SELECT seq, created_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)).fetchone()
        if row is None or row[1] >= t:
            hi = mid
        else:
            lo = row[0] + 1
    return lo


def _page(con: sqlite3.Connection, q: Query, oldest_first: bool) -> Page:
    first, last = con.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
    if first is None:
        return Page([], None)
    lo = first - 1 if q.after is None else max(q.after, first - 1)      # exclusive
    hi = last + 1 if q.before is None else min(q.before, last + 1)      # exclusive
    if q.since is not None:
        lo = max(lo, _first_seq_at(con, q.since, first, last + 1) - 1)
    if q.until is not None:
        hi = min(hi, _first_seq_at(con, q.until, first, last + 1))
    windowed = q.function is not None or q.kind is not None
    scan_lo, scan_hi = lo, hi
    if windowed and hi - lo - 1 > SCAN_WINDOW:
        if oldest_first:
            scan_hi = lo + SCAN_WINDOW + 1
        else:
            scan_lo = hi - SCAN_WINDOW - 1
    where = ["seq > ?", "seq < ?"]
    args: list[Any] = [scan_lo, scan_hi]
    for column, value in (("camera", q.camera), ("function", q.function)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if q.kind is not None:
        where.append("kind = ?")
        args.append(KINDS.index(q.kind))
    if q.since is not None:
        where.append("created_at >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("created_at < ?")
        args.append(q.until)
    limit = max(1, min(q.limit, MAX_LIMIT))
    order = "ASC" if oldest_first else "DESC"
    rows = con.execute(_SELECT + "WHERE " + " AND ".join(where)  # noqa: S608 (only column names are formatted)
                       + f" ORDER BY seq {order} LIMIT ?", (*args, limit + 1)).fetchall()
    events = [_entry(r) for r in rows[:limit]]
    if len(rows) > limit:
        return Page(events, events[-1].seq)
    # The window ended the scan before the bounds did: the next page goes on from where it stopped.
    if oldest_first and scan_hi < hi:
        return Page(events, scan_hi - 1)
    if not oldest_first and scan_lo > lo:
        return Page(events, scan_lo + 1)
    return Page(events, None)
