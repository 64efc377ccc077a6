"""The SQLite store: stable ids, CloudEvents, the outbox bounds, dead letters; real SQLite in tmp_path."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from edged.errors import EdgedError, OutboxFull
from edged.events import NewEvent
from edged.ingest.http import outbox_document
from edged.metrics import Metrics
from edged.settings import OutboxSettings, SyncSettings
from edged.store import OutboxEntry, OutboxState, Store
from edged.sync.cloudevents import CloudEvents
from tests import samples


def noise(seed: int, size: int) -> str:
    """``size`` hex digits that do not compress: padding that really takes room on disk."""
    return random.Random(seed).randbytes(size // 2 + 1).hex()[:size]  # noqa: S311 - padding, not secrets


DEVICE = "gw-1"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def result(function: str = "classify", camera: str = "cam1", n: int = 0, pad: int = 0) -> NewEvent:
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": camera, "function": function, "kind": "result",
        "source": {"transport": "mqtt", "camera": camera, "sha256": "00" * 32, "correlation": None,
                   "received_at": "2023-11-14T22:13:20.000Z"},
        "latency_ms": 1.5, "result": {"n": n, "pad": noise(n, pad)}, "image": None, "error": None,
    }
    return NewEvent(function, "result", data)


def image_result(body: bytes, camera: str = "cam1") -> NewEvent:
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": camera, "function": "grayscale", "kind": "result", "source": {},
        "latency_ms": 1.0, "result": None,
        "image": {"content_type": "image/png", "bytes": len(body), "sha256": "ab" * 32}, "error": None,
    }
    return NewEvent("grayscale", "result", data, body=body, content_type="image/png")


def error_event(function: str = "") -> NewEvent:
    data: dict[str, Any] = {"device_id": DEVICE, "camera": "cam1", "function": function, "kind": "error",
                            "source": {}, "latency_ms": 0.1, "result": None, "image": None,
                            "error": {"code": "bad_image", "detail": "not an image"}}
    return NewEvent(function, "error", data)


StoreFactory = Callable[..., Store]


def cloudevent(entry: OutboxEntry, sync: SyncSettings | None = None) -> Any:
    """The CloudEvent the sync loop would send for ``entry``, parsed."""
    return json.loads(CloudEvents(DEVICE, sync or SyncSettings()).encode(entry))


@pytest.fixture
def make_store(tmp_path: Path) -> StoreFactory:
    def make(*, outbox: OutboxSettings | None = None, sync: SyncSettings | None = None,
             clock: Callable[[], float] | None = None, metrics: Metrics | None = None) -> Store:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        admit = CloudEvents(DEVICE, sync or SyncSettings()).admit
        return Store(tmp_path / "edged.db", outbox or OutboxSettings(), admit, metrics, **kwargs)
    return make


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    async with make_store() as s:
        yield s


async def commit(store: Store, *events: NewEvent, camera: str = "cam1", sha: str = "00", at: float = 0.0,
                 publish_mqtt: bool = False) -> list[Any]:
    return await store.commit_input(transport="mqtt", camera=camera, sha256=sha, received_at=at or 1.0,
                                    correlation=b"corr", events=list(events), publish_mqtt=publish_mqtt)


async def test_commit_gives_stable_ids_and_cloudevents(store: Store) -> None:
    stored = await commit(store, result(n=1), error_event(), camera="cam7")
    assert len(stored) == 2
    first, second = stored
    assert len(first.id) == 32
    assert first.id != second.id
    assert second.seq > first.seq
    assert first.data["id"] == first.id
    assert first.camera == "cam7"
    batch = await store.outbox_batch(10, now=first.created_at + 1)
    assert [e.id for e in batch] == [first.id, second.id]
    ce = cloudevent(batch[0])
    assert ce["specversion"] == "1.0"
    assert ce["id"] == first.id
    assert ce["source"] == f"edged/{DEVICE}"
    assert ce["type"] == "io.edged.result.classify"
    assert ce["datacontenttype"] == "application/json"
    assert ce["subject"] == "cam7"
    assert ce["time"].endswith("Z")
    assert ce["data"] == first.data
    assert cloudevent(batch[1])["type"] == "io.edged.error.ingest"


async def test_ids_and_rows_survive_reopen(make_store: StoreFactory) -> None:
    async with make_store() as s:
        stored = await commit(s, result(n=1), result(n=2))
    async with make_store() as s:
        batch = await s.outbox_batch(10, now=stored[0].created_at + 1)
        assert [e.id for e in batch] == [e.id for e in stored]
        assert (await s.outbox_state()).depth == 2


async def test_wal_mode_on_disk(store: Store) -> None:
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


async def test_images_not_synced_unless_asked(make_store: StoreFactory) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    async with make_store() as s:
        stored = await commit(s, image_result(png))
        assert stored[0].body == png
        ce = cloudevent((await s.outbox_batch(1, now=2e9))[0])
        assert "data_base64" not in ce["data"]["image"]
        assert ce["data"]["image"]["bytes"] == len(png)


async def test_include_images_within_max_event_bytes(make_store: StoreFactory) -> None:
    small = b"\x89PNG" + b"\x01" * 100
    large = b"\x89PNG" + b"\x02" * 4000
    sync = SyncSettings(include_images=True, max_event_bytes=2048)
    async with make_store(sync=sync) as s:
        await commit(s, image_result(small), image_result(large))
        first, second = (cloudevent(e, sync) for e in await s.outbox_batch(10, now=2e9))
        assert base64.b64decode(first["data"]["image"]["data_base64"]) == small
        assert "data_base64" not in second["data"]["image"]  # synced without its bytes


async def test_oversize_event_is_counted_not_queued(make_store: StoreFactory) -> None:
    async with make_store(sync=SyncSettings(max_event_bytes=1024)) as s:
        stored = await commit(s, result(pad=2000), result(n=2))
        status = await s.outbox_state()
        assert status.depth == 1
        assert status.evicted == {"oversize": 1}
        assert [e.id for e in await s.outbox_batch(10, now=2e9)] == [stored[1].id]


async def test_recent_input_window(make_store: StoreFactory) -> None:
    clock = Clock()
    async with make_store(clock=clock) as s:
        stored = await commit(s, result(n=1), camera="cam1", sha="aa", at=clock.now)
        again = await s.recent_input("cam1", "aa", 10.0)
        assert again is not None
        assert [e.id for e in again] == [stored[0].id]
        assert again[0].data == stored[0].data
        assert await s.recent_input("cam2", "aa", 10.0) is None
        clock.now += 11
        assert await s.recent_input("cam1", "aa", 10.0) is None


async def test_mqtt_pending_and_published(store: Store) -> None:
    a = await commit(store, result(n=1), publish_mqtt=True)
    await commit(store, result(n=2), publish_mqtt=False)
    c = await commit(store, result(n=3), publish_mqtt=True)
    pending = await store.mqtt_pending(10)
    assert [e.id for e in pending] == [a[0].id, c[0].id]
    await store.mqtt_published([a[0].id])
    assert [e.id for e in await store.mqtt_pending(10)] == [c[0].id]


async def test_ack_retry_dead_and_retry_dead(store: Store) -> None:
    ids = [e.id for e in await commit(store, *(result(n=i) for i in range(4)))]
    now = 2e9
    await store.outbox_ack([ids[0]])
    await store.outbox_dead([ids[1]], "HTTP 400 from sidecar: bad")
    await store.outbox_retry([ids[2]], "HTTP 500 from sidecar", not_before=now + 60)
    status = await store.outbox_state()
    assert status.depth == 2
    assert status.dead == 1
    assert status.dead_letters[0].id == ids[1]
    assert status.dead_letters[0].reason == "HTTP 400 from sidecar: bad"
    # ids[2] waits until now+60, and ids[3] (same camera, later) must not pass it.
    assert await store.outbox_batch(10, now) == []
    later = await store.outbox_batch(10, now + 61)
    assert [(e.id, e.attempts) for e in later] == [(ids[2], 1), (ids[3], 0)]
    assert await store.retry_dead() == 1
    status = await store.outbox_state()
    assert status.dead == 0
    assert status.depth == 3
    assert [e.id for e in await store.outbox_batch(10, now + 61)] == [ids[1], ids[2], ids[3]]


async def test_waiting_camera_does_not_block_others(store: Store) -> None:
    a = await commit(store, result(n=1), camera="a")
    b = await commit(store, result(n=2), camera="b")
    a2 = await commit(store, result(n=3), camera="a")
    await store.outbox_retry([a[0].id], "HTTP 500", not_before=3e9)
    assert [e.id for e in await store.outbox_batch(10, 2e9)] == [b[0].id]
    assert a2[0].id not in [e.id for e in await store.outbox_batch(10, 2e9)]


async def test_drop_oldest_evicts_counts_and_logs(make_store: StoreFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    cap = 64 * 1024
    async with make_store(outbox=OutboxSettings(max_bytes=cap, on_full="drop_oldest"), metrics=metrics) as s:
        ids = []
        with caplog.at_level(logging.WARNING, logger="edged.store"):
            for i in range(200):
                ids += [e.id for e in await commit(s, result(n=i, pad=400))]
        status = await s.outbox_state()
        assert status.evicted_total > 0
        assert status.evicted["max_bytes"] == status.evicted_total
        assert status.store_bytes <= cap
        assert status.depth + status.evicted_total == 200
        # The newest are kept, the oldest went.
        left = [e.id for e in await s.outbox_batch(1000, 2e9)]
        assert left == ids[-len(left):]
        assert any("evicted" in r.getMessage() and "max_bytes" in r.getMessage() for r in caplog.records)
        evicted = metrics.registry.get_sample_value("edged_outbox_evicted_total", {"reason": "max_bytes"})
        assert evicted == status.evicted_total
    async with make_store(outbox=OutboxSettings(max_bytes=cap)) as s:
        assert (await s.outbox_state()).evicted_total == status.evicted_total  # kept on disk


async def test_reject_new_writes_nothing(make_store: StoreFactory) -> None:
    metrics = Metrics()
    async with make_store(outbox=OutboxSettings(max_bytes=16 * 1024, on_full="reject_new"), metrics=metrics) as s:
        committed = 0
        for i in range(200):
            try:
                await commit(s, result(n=i, pad=400))
            except OutboxFull as exc:
                full = exc
                break
            committed += 1
        else:
            raise AssertionError("never full")
        assert isinstance(full, EdgedError)
        assert full.http_status == 503
        assert full.code == "outbox_full"
        before = await s.outbox_state()
        assert before.depth == committed
        assert before.evicted_total == 0
        with pytest.raises(OutboxFull):
            await commit(s, result(n=999, pad=400), sha="ff")
        assert await s.recent_input("cam1", "ff", 1e9) is None
        assert (await s.outbox_state()).depth == committed
        assert metrics.registry.get_sample_value("edged_outbox_rejected_total") == 2
        # Room again once the sidecar took some.
        await s.outbox_ack([e.id for e in await s.outbox_batch(5, 2e9)])
        await commit(s, result(n=1000, pad=400))


async def test_max_age_expires(make_store: StoreFactory) -> None:
    clock = Clock()
    async with make_store(outbox=OutboxSettings(max_age=3600), clock=clock) as s:
        old = await commit(s, result(n=1))
        clock.now += 1800
        young = await commit(s, result(n=2))
        clock.now += 1900
        batch = await s.outbox_batch(10, clock.now)
        assert [e.id for e in batch] == [young[0].id]
        status = await s.outbox_state()
        assert status.evicted == {"max_age": 1}
        assert old[0].id not in [e.id for e in batch]


def test_open_sync_from_plain_code(make_store: StoreFactory) -> None:
    """No event loop runs while the store opens and closes; each query runs under a loop of its own."""
    s = make_store()
    s.open_sync()
    try:
        asyncio.run(commit(s, result()))
        assert asyncio.run(s.outbox_state()).depth == 1
    finally:
        s.close_sync()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


async def test_same_cloudevent_on_every_retry_and_after_an_interrupted_drain(make_store: StoreFactory) -> None:
    async with make_store() as s:
        stored = await commit(s, *(result(n=i) for i in range(10)))
        first = {e.id: cloudevent_bytes(e) for e in await s.outbox_batch(100, 2e9)}
        assert list(first) == [e.id for e in stored]
        await s.outbox_retry([stored[5].id], "HTTP 500 from sidecar", not_before=2e9 + 1)
        again = {e.id: cloudevent_bytes(e) for e in await s.outbox_batch(100, 2e9 + 2)}
        assert again == first, "a retry sends the same bytes"
        # The drain is cut off mid-batch: only the first four were acked when the process died.
        await s.outbox_ack([e.id for e in stored[:4]])
    async with make_store() as s:
        resent = {e.id: cloudevent_bytes(e) for e in await s.outbox_batch(100, 2e9 + 2)}
    assert resent == {i: b for i, b in first.items() if i not in {e.id for e in stored[:4]}}


def cloudevent_bytes(entry: OutboxEntry) -> bytes:
    return CloudEvents(DEVICE, SyncSettings()).encode(entry)


def classify_result(camera: str, i: int) -> NewEvent:
    """bench/outbox_bench.py's classify result (tests/samples.py): top-5 labels, a real digest, no image."""
    return samples.classify_result(camera, i, DEVICE)


async def test_a_classify_result_costs_at_most_600_bytes_on_disk(make_store: StoreFactory) -> None:
    n = 2000
    async with make_store() as s:
        for i in range(n):
            await commit(s, classify_result(f"cam{i % 8}", i), camera=f"cam{i % 8}", sha=f"{i:064x}")
        state = await s.outbox_state()
        assert state.depth == state.events == n
        path = s.path
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        assert con.execute("SELECT DISTINCT length(id) FROM events").fetchall() == [(16,)]
    finally:
        con.close()
    on_disk = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    assert on_disk / n <= 600, f"{on_disk / n:.0f} bytes per result"
    # What the cap counts per result is close to what it really costs, so max_bytes is a disk cap.
    assert 0.7 < state.store_bytes / on_disk < 1.3


def test_outbox_document_shows_bytes_per_result_and_hours_left() -> None:
    outbox = OutboxSettings(max_bytes=1_000_000)
    state = OutboxState(depth=100, bytes=40_000, store_bytes=40_000, oldest_age_s=1.0, dead=0, dead_letters=[],
                        evicted_total=0, evicted={}, events=100, disk_bytes=45_000, rate_per_s=2.0)
    doc = outbox_document(state, outbox, None)
    assert doc["bytes_per_result"] == 450
    assert doc["results_per_s"] == 2.0
    assert doc["hours_left"] == round(960_000 / (450 * 2.0) / 3600, 1)
    idle = outbox_document(OutboxState(**{**asdict(state), "rate_per_s": 0.0}), outbox, None)
    assert idle["hours_left"] is None
