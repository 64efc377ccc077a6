"""The event history in the store: pages newest first (and oldest first after a seq) with cursors that
neither skip nor repeat, one event, its image, pruning by history.max_age / max_bytes within the store's
cap, and the live feed's bounded subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edged.store.history as history_module
from edged.errors import Overloaded
from edged.events import NewEvent, StoredEvent
from edged.settings import HistorySettings, OutboxSettings, SyncSettings
from edged.store import Entry, Live, Query, Store
from edged.sync.cloudevents import CloudEvents
from tests.test_store import DEVICE, Clock, error_event, image_result, result

CAMERAS = ("cam-a", "cam-b", "cam-c")
FUNCTIONS = ("classify", "grayscale")
START = 1_700_000_000.0


def open_store(path: Path, clock: Clock, *, outbox: OutboxSettings | None = None,
               history: HistorySettings | None = None) -> Store:
    return Store(path, outbox or OutboxSettings(), CloudEvents(DEVICE, SyncSettings()).admit, clock=clock,
                 history=history)


async def commit(store: Store, camera: str, *events: NewEvent) -> list[StoredEvent]:
    return await store.commit_input(transport="mqtt", camera=camera, sha256="00" * 32, received_at=1.0,
                                    correlation=None, events=list(events), publish_mqtt=False)


def event(function: str, kind: str, camera: str, n: int) -> NewEvent:
    if kind == "error":
        return error_event(function)
    return result(function, camera, n)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[StoredEvent]]]:
    """One store with 90 events of three cameras, two functions and both kinds, one second apart."""
    clock = Clock(START)
    store = open_store(tmp_path_factory.mktemp("history") / "edged.db", clock)
    store.open_sync()

    async def fill() -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        for i in range(90):
            kind = "error" if i % 7 == 3 else "result"
            stored += await commit(store, CAMERAS[i * 5 % 3], event(FUNCTIONS[i % 2], kind, CAMERAS[i * 5 % 3], i))
            clock.now += 1.0
        return stored

    try:
        yield store, asyncio.run(fill())
    finally:
        store.close_sync()


def pages(store: Store, query: Query, *, oldest_first: bool) -> list[list[Entry]]:
    async def walk() -> list[list[Entry]]:
        out: list[list[Entry]] = []
        q = query
        for _ in range(200):  # bounded: 90 events, limit >= 1, short pages only at the scan window
            page = await store.history.page(q, oldest_first=oldest_first)
            assert len(page.events) <= q.limit
            out.append(page.events)
            if page.next is None:
                return out
            q = Query(**{**_fields(q), ("after" if oldest_first else "before"): page.next})
        raise AssertionError("paging did not end")

    return asyncio.run(walk())


def _fields(q: Query) -> dict[str, Any]:
    return {name: getattr(q, name) for name in Query.__slots__}


queries = st.builds(
    Query,
    camera=st.none() | st.sampled_from(CAMERAS),
    function=st.none() | st.sampled_from(FUNCTIONS),
    kind=st.none() | st.sampled_from(("result", "error")),
    since=st.none() | st.floats(START - 5, START + 95),
    until=st.none() | st.floats(START - 5, START + 95),
    limit=st.integers(1, 12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries, oldest_first=st.booleans(), window=st.sampled_from((5, 17, history_module.SCAN_WINDOW)))
def test_paging_gives_every_match_once_in_order(held: tuple[Store, list[StoredEvent]], query: Query,
                                                oldest_first: bool, window: int) -> None:
    store, stored = held
    expected = [e.id for e in stored
                if (query.camera is None or e.camera == query.camera)
                and (query.function is None or e.function == query.function)
                and (query.kind is None or e.kind == query.kind)
                and (query.since is None or e.created_at >= query.since)
                and (query.until is None or e.created_at < query.until)]
    if not oldest_first:
        expected.reverse()
    saved = history_module.SCAN_WINDOW
    history_module.SCAN_WINDOW = window  # a small window: short pages with a cursor that goes on
    try:
        got = pages(store, query, oldest_first=oldest_first)
    finally:
        history_module.SCAN_WINDOW = saved
    assert [e.id for page in got for e in page] == expected
    if window == saved or query.function is query.kind is None:
        # Without the window only the last page may be short.
        assert all(len(page) == query.limit for page in got[:-1])


async def test_get_and_image(tmp_path: Path) -> None:
    async with open_store(tmp_path / "edged.db", Clock()) as store:
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
        (gray,) = await commit(store, "cam1", image_result(png))
        (plain,) = await commit(store, "cam1", result())
        got = await store.history.get(gray.id)
        assert got is not None
        assert got.data == gray.data
        assert got.has_image
        assert got.created_at == gray.created_at
        image = await store.history.image(gray.id)
        assert image is not None
        assert (image.body, image.content_type) == (png, "image/png")
        no_image = await store.history.get(plain.id)
        assert no_image is not None
        assert not no_image.has_image
        assert await store.history.image(plain.id) is None
        assert await store.history.get("0" * 32) is None
        assert await store.history.image("0" * 32) is None


async def history_ids(store: Store) -> list[str]:
    return [e.id for e in (await store.history.page(Query(limit=500), oldest_first=True)).events]


async def test_history_expires_at_its_own_age_and_the_outbox_at_its(tmp_path: Path) -> None:
    clock = Clock(START)
    outbox = OutboxSettings(max_age=1000.0)
    async with open_store(tmp_path / "edged.db", clock, outbox=outbox,
                          history=HistorySettings(max_age=100.0)) as store:
        synced = [(await commit(store, "cam1", result(n=i)))[0] for i in range(3)]
        queued = (await commit(store, "cam1", result(n=9)))[0]
        await store.outbox_ack([e.id for e in synced])  # history from here on
        clock.now += 150.0  # past history.max_age, within outbox.max_age
        fresh = (await commit(store, "cam1", result(n=10)))[0]
        assert await history_ids(store) == [queued.id, fresh.id]
        clock.now += 1001.0  # past outbox.max_age too: the queued one is evicted as before
        last = (await commit(store, "cam1", result(n=11)))[0]
        assert await history_ids(store) == [last.id]
        assert (await store.outbox_state()).evicted == {"max_age": 2}


async def test_history_bytes_are_capped_and_outbox_rows_are_not_touched(tmp_path: Path) -> None:
    clock = Clock(START)
    async with open_store(tmp_path / "edged.db", clock, history=HistorySettings(max_bytes=20_000)) as store:
        synced = [(await commit(store, "cam1", result(n=i, pad=2000)))[0] for i in range(30)]
        await store.outbox_ack([e.id for e in synced])
        queued = [(await commit(store, "cam1", result(n=100 + i, pad=2000)))[0] for i in range(15)]
        kept = await history_ids(store)
        history = [i for i in kept if i in {e.id for e in synced}]
        state = await store.outbox_state()
        assert state.store_bytes - state.bytes <= 20_000  # history within history.max_bytes
        assert 0 < len(history) < 30
        assert history == [e.id for e in synced][-len(history):]
        assert kept[-15:] == [e.id for e in queued]  # every queued event is still there
        assert state.evicted_total == 0


async def test_history_yields_to_the_store_cap_first(tmp_path: Path) -> None:
    clock = Clock(START)
    outbox = OutboxSettings(max_bytes=40_000, on_full="reject_new")
    # history.max_bytes above the store's cap: the store's cap still wins, history going first.
    async with open_store(tmp_path / "edged.db", clock, outbox=outbox,
                          history=HistorySettings(max_bytes=10**9)) as store:
        synced = [(await commit(store, "cam1", result(n=i, pad=4000)))[0] for i in range(12)]
        await store.outbox_ack([e.id for e in synced])
        for i in range(12):
            await commit(store, "cam1", result(n=100 + i, pad=4000))
            assert (await store.outbox_state()).store_bytes <= 40_000
        state = await store.outbox_state()
        assert state.depth == 12
        assert state.evicted_total == 0
        assert len(await history_ids(store)) < 24


async def test_a_subscription_that_falls_behind_stays_bounded_and_says_so() -> None:
    live = Live(max_subscribers=2, queue=4)
    stored = [StoredEvent(f"{i:032x}", i, "cam1", "classify", "result", {"id": f"{i:032x}"}, None, None, 1.0)
              for i in range(1, 11)]
    with live.subscribe(Query(camera="cam1")) as sub, live.subscribe(Query(camera="other")) as other:
        live.publish(stored[:3])
        assert [(await sub.next()).seq for _ in range(3)] == [1, 2, 3]  # type: ignore[union-attr]
        live.publish(stored[3:])  # 7 at once into a queue of 4
        assert live.pending <= 4
        assert sub.take_lag()
        assert not sub.take_lag()
        assert other.pending == 0  # its filter let nothing in
        with pytest.raises(Overloaded), live.subscribe(Query()):
            pass
        live.close()
        assert sub.closed
        assert await sub.next() is None
    assert live.subscribers == 0
