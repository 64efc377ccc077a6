"""Group commit (issue 14, lever 1): writes queued on the store's writer share one transaction and fsync.

Real SQLite in tmp_path. To make a batch happen for certain, each test holds the writer thread with a
job of its own, lets the writes queue up behind it, then lets go: the next drain takes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edged.errors import OutboxFull
from edged.events import NewEvent, StoredEvent
from edged.metrics import Metrics
from edged.settings import OutboxSettings, SyncSettings
from edged.store import Store, StoreError
from edged.store.counters import Delta
from edged.store.group import MAX_JOBS
from edged.sync.cloudevents import CloudEvents
from tests.samples import classify_result, digest
from tests.waiting import until

DEVICE = "gw-1"
_T = TypeVar("_T")


def make_store(path: Path, metrics: Metrics | None = None, **outbox: Any) -> Store:
    return Store(path, OutboxSettings(**outbox), CloudEvents(DEVICE, SyncSettings()).admit, metrics)


async def commit(store: Store, i: int, camera: str = "cam1", *events: NewEvent) -> list[StoredEvent]:
    return await store.commit_input(transport="mqtt", camera=camera, sha256=digest(i), received_at=1.7e9,
                                    correlation=None, events=list(events) or [classify_result(camera, i, DEVICE)],
                                    publish_mqtt=False)


def transactions(metrics: Metrics) -> tuple[float, float]:
    """(write transactions, writes committed) so far."""
    get = metrics.registry.get_sample_value
    return get("edged_store_transactions_total") or 0.0, get("edged_store_commits_total") or 0.0


@contextlib.asynccontextmanager
async def held_writer(store: Store, queued: int) -> AsyncIterator[None]:
    """Hold the writer thread while the body queues writes; once ``queued`` wait, let it go."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> bool:
        holding.set()
        return release.wait(30)

    held: Future[bool] = store._db.submit(hold)  # noqa: SLF001 (the store's writer thread)
    try:
        # Writer jobs submitted before are done by then: what queues now waits for the next drain.
        await until(holding.is_set, 30, "the writer thread to be held")
        yield
        await until(lambda: store._db.waiting >= queued, 30, f"{queued} writes to queue")  # noqa: SLF001
    finally:
        release.set()
        assert held.result(30)


def rows(path: Path, sql: str) -> list[Any]:
    """Read through a connection of its own: sees only what was committed."""
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tasks(*coros: Awaitable[_T]) -> list[asyncio.Task[_T]]:
    return [asyncio.ensure_future(c) for c in coros]


async def test_concurrent_commits_share_one_transaction_and_all_are_durable(tmp_path: Path) -> None:
    metrics = Metrics()
    path = tmp_path / "edged.db"
    async with make_store(path, metrics) as store:
        before = transactions(metrics)
        async with held_writer(store, 24):
            running = tasks(*(commit(store, i, f"cam{i % 8}") for i in range(24)))
        # Each caller returns only once the shared COMMIT is on disk: another connection sees its rows.
        for done in asyncio.as_completed(running):
            stored = await done
            assert rows(path, f"SELECT COUNT(*) FROM events WHERE seq = {stored[0].seq}") == [(1,)]  # noqa: S608
        after = transactions(metrics)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 24)
        ids = [s[0].id for s in (t.result() for t in running)]
        assert len(set(ids)) == 24
        assert sorted(s[0].seq for s in (t.result() for t in running)) == list(range(1, 25))
    async with make_store(path) as store:
        assert (await store.outbox_state()).depth == 24
        assert sorted(e.id for e in await store.outbox_batch(100, now=2e9)) == sorted(ids)
    # Each input's row points at its own event.
    assert rows(path, "SELECT COUNT(*) FROM inputs i JOIN events e ON e.seq = i.first_seq") == [(24,)]


async def test_a_batch_is_bounded_and_the_rest_follows_in_the_next(tmp_path: Path) -> None:
    metrics = Metrics()
    async with make_store(tmp_path / "edged.db", metrics) as store:
        before = transactions(metrics)
        n = MAX_JOBS + 6
        async with held_writer(store, n):
            running = tasks(*(commit(store, i) for i in range(n)))
        assert len(await asyncio.gather(*running)) == n
        after = transactions(metrics)
        assert (after[0] - before[0], after[1] - before[1]) == (2, n)
        assert (await store.outbox_state()).depth == n
    with pytest.raises(StoreError, match="not open"):
        await commit(store, n)  # closed: refused at once, nothing waits for a writer that is gone


async def test_a_write_alone_is_its_own_transaction(tmp_path: Path) -> None:
    """Nothing waits for company: with the writer idle, a commit goes at once, by itself."""
    metrics = Metrics()
    async with make_store(tmp_path / "edged.db", metrics) as store:
        for i in range(3):
            before = transactions(metrics)
            await commit(store, i)
            after = transactions(metrics)
            assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_a_refused_write_in_a_batch_leaves_the_others_committed(tmp_path: Path) -> None:
    metrics = Metrics()
    path = tmp_path / "edged.db"
    big = NewEvent("classify", "result", {"camera": "cam1", "kind": "result", "result": {"pad": "x" * 10_000}},
                   body=bytes(range(256)) * 40, content_type="application/octet-stream")
    async with make_store(path, metrics, max_bytes=8192, on_full="reject_new") as store:
        async with held_writer(store, 3):
            first, refused, last = tasks(commit(store, 1), commit(store, 2, "cam1", big), commit(store, 3))
        assert (await first)[0].seq < (await last)[0].seq
        with pytest.raises(OutboxFull):
            await refused
        assert await store.recent_input("cam1", digest(2), 1e12) is None  # nothing of it was written
        assert (await store.outbox_state()).depth == 2
        assert metrics.registry.get_sample_value("edged_outbox_rejected_total") == 1
        assert not store.full  # a later write in the batch committed: the refusal is not the last word
    assert len(rows(path, "SELECT seq FROM events")) == 2


async def test_a_failing_write_in_a_batch_is_rolled_back_alone(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"

    def duplicate(db: sqlite3.Connection, delta: Delta) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('test', 1)")
        db.execute("INSERT INTO meta (key, value) VALUES ('test', 2)")  # a constraint error

    async with make_store(path) as store:
        async with held_writer(store, 3):
            first = asyncio.ensure_future(commit(store, 1))
            broken = asyncio.ensure_future(store._db.commit(duplicate))  # noqa: SLF001 (a write that fails)
            last = asyncio.ensure_future(commit(store, 2))
        with pytest.raises(StoreError, match="UNIQUE constraint failed") as failed:
            await broken
        assert isinstance(failed.value.__cause__, sqlite3.IntegrityError)
        assert len(await first) == len(await last) == 1
    assert rows(path, "SELECT key FROM meta WHERE key = 'test'") == []  # its first row went with it
    assert len(rows(path, "SELECT seq FROM events")) == 2


async def test_each_write_in_a_batch_sees_the_space_the_earlier_ones_took(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    async with make_store(path, max_bytes=4096, on_full="reject_new") as store:
        async with held_writer(store, 30):
            running = tasks(*(commit(store, i) for i in range(30)))
        outcomes = await asyncio.gather(*running, return_exceptions=True)
        committed = [o for o in outcomes if isinstance(o, list)]
        assert committed, "nothing fit"
        assert all(isinstance(o, OutboxFull) for o in outcomes[len(committed):]), "a later write passed a refusal"
        state = await store.outbox_state()
        assert state.depth == len(committed) < 30
        assert state.store_bytes <= 4096
        assert store.full


async def test_attempts_of_one_frame_in_one_batch_add_up(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    sha = digest(7)
    async with make_store(path) as store:
        async with held_writer(store, 6):
            counting = tasks(*(store.count_attempt("cam1", sha) for _ in range(5)), commit(store, 8))
        assert await asyncio.gather(*counting[:5]) == [1, 2, 3, 4, 5]
        await counting[5]
        assert store.attempts("cam1", sha) == 5
        async with held_writer(store, 2):
            back = tasks(store.count_attempt("cam1", sha, -1), commit(store, 7))
        assert await back[0] == 4
        await back[1]
        assert store.attempts("cam1", sha) == 0  # the commit in the same batch deleted the row
        async with held_writer(store, 2):
            fresh = tasks(store.count_attempt("cam1", digest(9)), commit(store, 9))
        assert await fresh[0] == 1
        await fresh[1]
        assert store.attempts("cam1", digest(9)) == 0  # counted and committed in one transaction: gone
    assert rows(path, "SELECT n FROM attempts") == []


async def test_a_cancelled_write_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    async with make_store(path) as store:
        async with held_writer(store, 2):
            cancelled, kept = tasks(commit(store, 1), commit(store, 2))
            await until(lambda: store._db.waiting == 2, 30, "both writes to queue")  # noqa: SLF001
            cancelled.cancel()
            await until(cancelled.done, 30, "the cancellation to reach the queued write")
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await kept
        assert await store.recent_input("cam1", digest(1), 1e12) is None
    assert len(rows(path, "SELECT seq FROM events")) == 1



async def test_a_failing_commit_written_with_its_neighbours_fails_alone(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits side by side are written together; when that fails (here: an id already taken), they are
    written one by one, and only the failing one fails."""
    path = tmp_path / "edged.db"
    async with make_store(path) as store:
        taken = (await commit(store, 0))[0].id
        fresh = iter(["0" * 31 + "1", taken, "0" * 31 + "3"])
        monkeypatch.setattr("edged.store.events.new_event_id", lambda: next(fresh))
        async with held_writer(store, 3):
            first, clashing, last = tasks(commit(store, 1), commit(store, 2), commit(store, 3))
        with pytest.raises(StoreError, match="UNIQUE constraint failed"):
            await clashing
        assert [(await first)[0].id, (await last)[0].id] == ["0" * 31 + "1", "0" * 31 + "3"]
        assert await store.recent_input("cam1", digest(2), 1e12) is None
        assert (await store.outbox_state()).depth == 3
    # The failed write took no seq along (as a rolled-back AUTOINCREMENT insert takes none).
    assert rows(path, "SELECT seq FROM events ORDER BY seq") == [(1,), (2,), (3,)]


async def test_seqs_of_commits_written_together_are_never_handed_out_twice(tmp_path: Path) -> None:
    """Seqs continue after the highest ever given, as AUTOINCREMENT's would, even once those rows are gone."""
    path = tmp_path / "edged.db"
    async with make_store(path) as store:
        async with held_writer(store, 4):
            running = tasks(*(commit(store, i, f"cam{i}") for i in range(4)))
        assert [s[0].seq for s in await asyncio.gather(*running)] == [1, 2, 3, 4]
    con = sqlite3.connect(path)
    with con:
        con.execute("DELETE FROM outbox WHERE seq >= 3")
        con.execute("DELETE FROM events WHERE seq >= 3")
    con.close()
    async with make_store(path) as store:
        async with held_writer(store, 2):
            running = tasks(commit(store, 10), commit(store, 11))
        assert [s[0].seq for s in await asyncio.gather(*running)] == [5, 6]
