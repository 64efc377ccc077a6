"""Which group-commit batches are fsynced: any batch holding a durable job (inputs and their events) commits
with synchronous = FULL; a batch of only MQTT publish marks and attempt counts commits with NORMAL (in the WAL
before it returns, fsynced with the next durable one). Real SQLite in tmp_path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from edged.metrics import Metrics
from edged.store import Store
from edged.store.counters import Delta
from tests.samples import digest
from tests.test_group_commit import commit, held_writer, make_store, rows, tasks


def mode(db: sqlite3.Connection, delta: Delta) -> int:
    """The connection's synchronous setting inside the job's transaction (1 NORMAL, 2 FULL)."""
    value: int = db.execute("PRAGMA synchronous").fetchone()[0]
    return value


async def test_marks_and_attempts_alone_commit_without_an_fsync_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    async with make_store(path, Metrics()) as store:
        stored = await commit(store, 1)
        assert await store._db.commit(mode, durable=False) == 1  # noqa: SLF001 (the store's writer)
        assert await store._db.commit(mode) == 2  # noqa: SLF001
        await store.count_attempt("cam1", digest(2))
        await store.mqtt_published([stored[0].id])
        # Committed all the same: another connection sees both.
        assert rows(path, "SELECT COUNT(*) FROM attempts") == [(1,)]
        assert rows(path, "SELECT mqtt_pending FROM events") == [(0,)]


async def test_a_batch_holding_one_durable_job_is_fsynced(tmp_path: Path) -> None:
    async with make_store(tmp_path / "edged.db", Metrics()) as store:
        db = store._db  # noqa: SLF001
        async with held_writer(store, 3):
            running = tasks(db.commit(mode, durable=False), db.commit(mode), db.commit(mode, durable=False))
        assert await asyncio.gather(*running) == [2, 2, 2]
        async with held_writer(store, 2):
            running = tasks(db.commit(mode, durable=False), db.commit(mode, durable=False))
        assert await asyncio.gather(*running) == [1, 1]


async def test_a_store_opened_again_starts_fsynced(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    async with make_store(path) as store:
        assert await store._db.commit(mode, durable=False) == 1  # noqa: SLF001
    reopened: Store
    async with make_store(path) as reopened:
        assert await reopened._db.commit(mode) == 2  # noqa: SLF001
