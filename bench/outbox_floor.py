"""The outbox bench's floors and breakdown: what SQLite alone costs, which pages a transaction writes, and
what each of edged's own steps per result costs, measured apart (bench/outbox_bench.py prints them).

- ``floor``: the rows a fill wrote, inserted again by bare sqlite3 into an empty store of the same schema
  and pragmas, the same number of results per transaction (one executemany per table, synchronous=FULL),
  with nothing else per result. Variants: a larger page cache, checkpoints less often, smaller pages, or
  without one index (its price).
- ``wal_pages``: the WAL frames one such transaction appends to a store as full as the fill left it,
  counted by the b-tree each page belongs to (SQLite's dbstat).
- ``pieces``: edged's per-result steps (JSON, deflate, the sync side's admit, ids and result objects)
  timed alone on one sample result, CPU µs each.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import time
import timeit
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.events import StoredEvent, new_event_id
from edged.settings import SyncSettings
from edged.store import OutboxEntry
from edged.store.codec import frame_key, id_bytes, pack, with_id
from edged.store.db import SCHEMA
from edged.store.events import (
    INSERT_EVENTS,
    INSERT_INPUTS,
    INSERT_OUTBOX,
    _dumps,  # noqa: PLC2701 (the store's own encoder, timed alone)
)
from edged.sync.cloudevents import CloudEvents
from tests.samples import classify_result, digest

__all__ = ["BUILD", "FloorRun", "floor", "growth", "pieces", "wal_pages"]

#: The step of ``pieces`` that is the bench's, not edged's (it runs on the loop, in the fill's figures).
BUILD = "the bench building a sample result (tests/samples.py)"


@dataclass(frozen=True, slots=True)
class FloorRun:
    """µs per result: the whole run (wall, CPU), and the wall of its first and of its last ``chunk`` inputs."""

    wall: float
    cpu: float
    first: float
    last: float
    chunk: int


def _rows(filled: Path) -> tuple[list[tuple[Any, ...]], dict[int, int], list[tuple[Any, ...]]]:
    src = sqlite3.connect(filled)
    try:
        events = src.execute("SELECT seq, id, camera, function, kind, data, body, content_type, created_at, "
                             "mqtt_pending FROM events ORDER BY seq").fetchall()
        outbox = dict(src.execute("SELECT seq, with_image FROM outbox"))
        inputs = src.execute("SELECT frame, received_at, first_seq, events FROM inputs ORDER BY id").fetchall()
    finally:
        src.close()
    return events, outbox, inputs


def _connect(path: Path, pragmas: Sequence[str] = ()) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    for pragma in pragmas:
        con.execute(f"PRAGMA {pragma}")
    return con


def _schema(path: Path, without: str | None, page_size: int | None) -> None:
    """The store's schema as edged makes it (edged.store.db; auto_vacuum first), less index ``without``."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        if page_size is not None:
            con.execute(f"PRAGMA page_size = {page_size}")
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        con.execute("PRAGMA journal_mode = WAL")
        con.executescript(SCHEMA)
        if without is not None:
            con.execute(f"DROP INDEX {without}")
    finally:
        con.close()


def floor(filled: Path, target: Path, per_transaction: int, *, chunk: int, pragmas: Sequence[str] = (),
          without: str | None = None, page_size: int | None = None) -> FloorRun:
    """Insert the rows of ``filled`` again into ``target`` (empty), ``per_transaction`` inputs at a time;
    ``pragmas`` on the writing connection, ``page_size`` for the new file."""
    events, outbox, inputs = _rows(filled)
    by_seq = {row[0]: row for row in events}
    _schema(target, without, page_size)
    con = _connect(target, pragmas)
    ends: list[float] = []
    try:
        began, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(inputs), per_transaction):
            group = inputs[start:start + per_transaction]
            seqs = [seq for _f, _r, first, n in group for seq in range(first, first + n)]
            con.execute("BEGIN IMMEDIATE")
            con.executemany(INSERT_EVENTS, [by_seq[seq] for seq in seqs])
            con.executemany(INSERT_OUTBOX, [(seq, outbox[seq]) for seq in seqs if seq in outbox])
            con.executemany(INSERT_INPUTS, group)
            con.execute("COMMIT")
            ends.append(time.perf_counter())
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        con.close()
    n = len(inputs)
    return FloorRun(wall * 1e6 / n, cpu * 1e6 / n, *_ends(began, ends, per_transaction, chunk), chunk)


def _ends(began: float, ends: Sequence[float], per: int, chunk: int) -> tuple[float, float]:
    """µs per input of the first and of the last ``chunk`` inputs, from the end times of groups of ``per``."""
    k = max(1, min(len(ends) // 2, chunk // per))
    return (ends[k - 1] - began) * 1e6 / (k * per), (ends[-1] - ends[-1 - k]) * 1e6 / (k * per)


def growth(began: float, ends: Sequence[float], chunk: int) -> tuple[float, float]:
    """The fill's first and last ``chunk`` commits (end times, in order): µs per result each."""
    return _ends(began, sorted(ends), 1, chunk)


def wal_pages(filled: Path, work: Path, per_transaction: int, transactions: int = 50) -> tuple[float, Counter[str]]:
    """WAL frames per transaction of ``per_transaction`` new inputs (shaped like the last ones) committed to a
    copy of ``filled``; and per b-tree (pages dbstat does not name: pointer maps, free pages)."""
    for part in filled.parent.glob(filled.name + "*"):
        shutil.copyfile(part, work.parent / part.name.replace(filled.name, work.name))
    con = _connect(work)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        con.execute("PRAGMA wal_autocheckpoint = 0")
        n = per_transaction * transactions
        last = con.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        template = con.execute("SELECT seq, id, camera, function, kind, data, body, content_type, created_at, "
                               "mqtt_pending FROM events ORDER BY seq DESC LIMIT ?", (n,)).fetchall()[::-1]
        for t in range(transactions):
            rows = template[t * per_transaction:(t + 1) * per_transaction]
            seqs = [last + t * per_transaction + i + 1 for i in range(len(rows))]
            con.execute("BEGIN IMMEDIATE")
            con.executemany(INSERT_EVENTS, [(seq, id_bytes(new_event_id()), *row[2:])
                                             for seq, row in zip(seqs, rows, strict=True)])
            con.executemany(INSERT_OUTBOX, [(seq, 0) for seq in seqs])
            # A new frame's key is a hash: as random as edged.store.codec.frame_key makes it.
            con.executemany(INSERT_INPUTS, [(struct.unpack(">q", os.urandom(8))[0], time.time(), seq, 1)
                                             for seq in seqs])
            con.execute("COMMIT")
        names = dict(con.execute("SELECT pageno, name FROM dbstat"))
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        # Before closing: the last connection to close checkpoints the WAL and deletes it.
        wal = (work.parent / (work.name + "-wal")).read_bytes()
    finally:
        con.close()
    frames = Counter(names.get(struct.unpack_from(">I", wal, offset)[0], "other (pointer map, free list)")
                     for offset in range(32, len(wal), 24 + page_size))
    for part in work.parent.glob(work.name + "*"):
        os.remove(part)
    per = Counter({name: count / transactions for name, count in frames.items()})
    return sum(frames.values()) / transactions, per


def pieces(device: str) -> dict[str, float]:
    """CPU µs per result of edged's own steps on one sample result, each timed alone (best of 5)."""
    event = classify_result("cam0", 1, device)
    body = _dumps(event.data)
    event_id, sha256 = new_event_id(), digest(1)
    admit = CloudEvents(device, SyncSettings()).admit
    steps: dict[str, Callable[[], object]] = {
        BUILD: lambda: classify_result("cam0", 1, device),
        "JSON of the body": lambda: _dumps(event.data),
        "deflate of the body (codec.pack)": lambda: pack(body),
        "admit (OutboxEntry + CloudEvents.admit)": lambda: admit(OutboxEntry(
            event_id, 0, "cam0", event.function, event.kind, 1.7e9, with_id(event_id, body), event.body, 0)),
        "id, frame key and result object": lambda: (
            new_event_id(), frame_key("cam0", sha256), id_bytes(event_id),
            StoredEvent(event_id, 1, "cam0", event.function, event.kind, {"id": event_id, **event.data}, None,
                        None, 1.7e9)),
    }
    number = 2000
    return {name: min(timeit.repeat(step, number=number, repeat=5, timer=time.process_time)) * 1e6 / number
            for name, step in steps.items()}
