"""A store written by edged before issue 15 (schema 1, tests/data/store_v1.db) opens migrated, losing nothing;
so does a schema-2 store (before poison frames were counted)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edged.settings import OutboxSettings, SyncSettings
from edged.store import Store, StoreError
from edged.store.history import Query
from edged.sync.cloudevents import CloudEvents

V1 = Path(__file__).parent / "data" / "store_v1.db"
DEVICE = "gw-v1"  # the device tests/data/make_store_v1.py wrote it as
SYNC = SyncSettings(include_images=True)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def v1_store(tmp_path: Path) -> Path:
    path = tmp_path / "edged.db"
    shutil.copyfile(V1, path)
    return path


def open_store(path: Path) -> Store:
    return Store(path, OutboxSettings(), CloudEvents(DEVICE, SYNC).admit)


async def test_v1_store_is_migrated_in_place_without_losing_a_result(v1_store: Path) -> None:
    before = query(v1_store, "SELECT id, state, attempts, last_error, cloudevent FROM outbox ORDER BY seq")
    mqtt_before = [r[0] for r in query(v1_store, "SELECT id FROM events WHERE mqtt_pending = 1 ORDER BY seq")]
    assert query(v1_store, "PRAGMA user_version") == [(1,)]
    # The fixture is what it says: some queued events lost their events row to history in v1.
    orphans = query(v1_store, "SELECT COUNT(*) FROM outbox o WHERE NOT EXISTS "
                              "(SELECT 1 FROM events e WHERE e.seq = o.seq)")[0][0]
    assert orphans >= 3
    queued = [r for r in before if r[1] == 0]
    dead = [r for r in before if r[1] == 1]
    assert queued
    assert dead

    encode = CloudEvents(DEVICE, SYNC).encode
    async with open_store(v1_store) as store:
        state = await store.outbox_state()
        assert state.depth == len(queued)
        assert state.dead == len(dead)
        assert [(d.id, d.reason, d.attempts) for d in state.dead_letters] == [(r[0], r[3], r[2]) for r in dead]
        batch = await store.outbox_batch(100, now=2e9)
        assert [(e.id, e.attempts) for e in batch] == [(r[0], r[2]) for r in queued]
        # What the sync loop sends now is byte-for-byte the CloudEvent v1 had stored.
        assert [encode(e) for e in batch] == [r[4] for r in queued]
        assert [e.id for e in await store.mqtt_pending(100)] == mqtt_before
        assert await store.retry_dead() == len(dead)
        again = await store.outbox_batch(100, now=2e9)
        assert sorted(encode(e) for e in again) == sorted(r[4] for r in before)
    assert query(v1_store, "PRAGMA user_version") == [(4,)]  # through 2 and 3 to 4
    tables = {r[0] for r in query(v1_store, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any(t.startswith("v1_") for t in tables)
    assert "attempts" in tables
    async with open_store(v1_store) as store:  # opened again: nothing to migrate, same ids
        assert [e.id for e in await store.outbox_batch(100, now=2e9)] == [e.id for e in again]


async def test_new_results_follow_the_migrated_ones(v1_store: Path) -> None:
    from test_store import result  # the same result shape as the store tests

    last_seq = query(v1_store, "SELECT MAX(seq) FROM outbox")[0][0]
    async with open_store(v1_store) as store:
        new = await store.commit_input(transport="mqtt", camera="cam-a", sha256="ff" * 32, received_at=1.7e9,
                                       correlation=None, events=[result(camera="cam-a")], publish_mqtt=False)
        assert new[0].seq > last_seq
        batch = await store.outbox_batch(100, now=2e9)
        assert batch[-1].id == new[0].id


async def test_a_failed_migration_leaves_the_v1_store_as_it_was(v1_store: Path) -> None:
    before = query(v1_store, "SELECT seq, id, cloudevent FROM outbox ORDER BY seq")
    # A row v1 could not have written, on an event the migration must rebuild from it: the migration
    # fails there and must roll back entirely.
    con = sqlite3.connect(v1_store)
    con.execute("UPDATE outbox SET cloudevent = x'00' WHERE seq = (SELECT MIN(seq) FROM outbox o WHERE NOT EXISTS "
                "(SELECT 1 FROM events e WHERE e.seq = o.seq))")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="cannot migrate from schema 1"):
        async with open_store(v1_store):
            pass
    assert query(v1_store, "PRAGMA user_version") == [(1,)]
    after = query(v1_store, "SELECT seq, id, cloudevent FROM outbox ORDER BY seq")
    assert [r[:2] for r in after] == [r[:2] for r in before]
    assert after[1:] == before[1:]


async def test_v2_store_gains_the_attempts_table_and_keeps_its_rows(tmp_path: Path) -> None:
    from test_store import result

    path = tmp_path / "edged.db"
    async with open_store(path) as store:
        kept = await store.commit_input(transport="mqtt", camera="cam-a", sha256="ab" * 32, received_at=1.7e9,
                                        correlation=None, events=[result(camera="cam-a")], publish_mqtt=True)
    # What edged with schema 2 left: the same tables but attempts.
    con = sqlite3.connect(path)
    con.execute("DROP TABLE attempts")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    async with open_store(path) as store:
        assert [e.id for e in await store.mqtt_pending(10)] == [kept[0].id]
        assert await store.count_attempt("cam-b", "cd" * 32) == 1
    assert query(path, "PRAGMA user_version") == [(4,)]
    assert query(path, "SELECT n FROM attempts") == [(1,)]


async def test_v3_store_gains_the_camera_index_and_keeps_its_rows(tmp_path: Path) -> None:
    from test_store import result

    path = tmp_path / "edged.db"
    async with open_store(path) as store:
        kept = [(await store.commit_input(transport="mqtt", camera=cam, sha256=f"{i:064x}", received_at=1.7e9,
                                          correlation=None, events=[result(camera=cam)], publish_mqtt=False))[0]
                for i, cam in enumerate(("cam-a", "cam-b", "cam-a"))]
    # What edged with schema 3 left: the same tables without the history's camera index.
    con = sqlite3.connect(path)
    con.execute("DROP INDEX events_by_camera")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    async with open_store(path) as store:
        page = await store.history.page(Query(camera="cam-a"))
        assert [e.id for e in page.events] == [kept[2].id, kept[0].id]
    assert query(path, "PRAGMA user_version") == [(4,)]
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'events_by_camera'") == [("events_by_camera",)]
    plan = query(path, "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE camera = 'cam-a' AND seq < 9 "
                       "ORDER BY seq DESC LIMIT 5")
    assert any("events_by_camera" in str(row[-1]) for row in plan)
