"""Outbox -> Dapr sync against the sidecar emulator: offline, failing, slow, wrong token, dead letters, caps.

Real SQLite in tmp_path, the real sync loop, a real HTTP sidecar emulator on a loopback port. The
daemon-level scenario (SIGKILL during a sync) is at the end and runs ``python -m edged run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import random
import signal
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from configs import daemon_config, merge, write_config
from daemon import run_daemon
from dapr_emulator import CLOUDEVENT, DaprEmulator
from PIL import Image
from pydantic import SecretStr
from waiting import until, wait_until
from wat import Wat, write_wasm

from edged.errors import OutboxFull
from edged.events import NewEvent, StoredEvent
from edged.metrics import Metrics
from edged.settings import DaprSettings, OutboxSettings, SyncSettings
from edged.status import Components
from edged.store import Store
from edged.sync.cloudevents import CloudEvents
from edged.sync.dapr import DaprSync


def noise(seed: int, size: int) -> str:
    """``size`` hex digits that do not compress: padding that really takes room on disk."""
    return random.Random(seed).randbytes(size // 2 + 1).hex()[:size]  # noqa: S311 - padding, not secrets


DEVICE = "gw-test"
CAMERAS = ("cam-a", "cam-b", "cam-c", "cam-d")
FAST = {"retry_min": 0.01, "retry_max": 0.1, "auth_retry": 0.2, "timeout": 5.0}


def event(camera: str, n: int, pad: int = 0) -> NewEvent:
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": camera, "function": "classify", "kind": "result",
        "source": {"transport": "mqtt", "camera": camera, "sha256": f"{n:064x}", "correlation": None,
                   "received_at": "2024-01-01T00:00:00.000Z"},
        "latency_ms": 1.0, "result": {"n": n, "pad": noise(n, pad)}, "image": None, "error": None,
    }
    return NewEvent("classify", "result", data)


async def commit_many(store: Store, n: int, cameras: tuple[str, ...] = CAMERAS, pad: int = 0) -> list[StoredEvent]:
    stored: list[StoredEvent] = []
    for i in range(n):
        camera = cameras[i % len(cameras)]
        stored += await store.commit_input(transport="mqtt", camera=camera, sha256=f"{i:064x}", received_at=1.0,
                                           correlation=None, events=[event(camera, i, pad)], publish_mqtt=False)
    return stored


async def fill_until_full(store: Store) -> list[StoredEvent]:
    """Commit until the store says OutboxFull; what was accepted before that."""
    stored: list[StoredEvent] = []
    for i in range(10_000):
        try:
            stored += await commit_many(store, 1, cameras=(f"cam{i % 3}",), pad=500)
        except OutboxFull:
            return stored
    raise AssertionError("the outbox never filled up")


@pytest.fixture
def dapr() -> Iterator[DaprEmulator]:
    with DaprEmulator() as emulator:
        yield emulator


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "edged.db", OutboxSettings(), CloudEvents(DEVICE, SyncSettings()).admit) as s:
        yield s


class Syncing:
    def __init__(self, components: Components, metrics: Metrics, loop: DaprSync) -> None:
        self.components = components
        self.metrics = metrics
        self.status = loop.status

    def state(self) -> tuple[str, str]:
        s = self.components.get("dapr")
        assert s is not None
        return s.state, s.detail


@contextlib.asynccontextmanager
async def syncing(store: Store, dapr: DaprEmulator, *, batch: int = 50, **overrides: Any) -> AsyncIterator[Syncing]:
    settings = DaprSettings(url=dapr.url, **{**FAST, **overrides})
    components, metrics = Components(), Metrics()
    loop = DaprSync(settings, SyncSettings(batch=batch), store, components, metrics,
                    cloudevents=CloudEvents(DEVICE, SyncSettings()))
    task = asyncio.create_task(loop.run(), name="edged.sync.drain")
    try:
        yield Syncing(components, metrics, loop)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def per_camera(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    lanes: dict[str, list[str]] = {}
    for ev in events:
        lanes.setdefault(ev["subject"], []).append(ev["id"])
    return lanes


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
async def test_offline_1000_then_online_all_arrive_once_in_order(store: Store, dapr: DaprEmulator,
                                                                 bulk: bool) -> None:
    dapr.go_offline()
    async with syncing(store, dapr, bulk=bulk) as sync:
        await until(lambda: sync.state()[0] == "disconnected", what="the loop to notice the sidecar is down")
        assert "cannot reach the sidecar" in sync.state()[1]
        stored = await commit_many(store, 1000)
        status = await store.outbox_state()
        assert status.depth == 1000
        assert status.oldest_age_s is not None
        assert sync.status.last_error is not None
        assert sync.status.last_sync_at is None
        dapr.go_online()
        await dapr.until(lambda d: len(d.published) >= 1000, what="1000 events at the sidecar")
        await until(lambda: _depth_is(store, 0), what="an empty outbox")
        assert sync.state()[0] == "connected"
    published = dapr.published
    counts = Counter(p.id for p in published)
    assert set(counts) == {e.id for e in stored}
    assert max(counts.values()) == 1, "each event once"
    assert {p.via for p in published} == {"bulk" if bulk else "single"}
    assert {p.content_type for p in published} == {CLOUDEVENT}
    assert all(p.metadata == {"partitionKey": p.event["subject"]} for p in published)
    expected = per_camera([{"subject": e.camera, "id": e.id} for e in stored])
    assert per_camera([p.event for p in published]) == expected
    first = next(p.event for p in published if p.id == stored[0].id)
    assert first["source"] == f"edged/{DEVICE}"
    assert first["type"] == "io.edged.result.classify"
    assert first["data"]["id"] == stored[0].id
    assert "time" in first
    assert first["datacontenttype"] == "application/json"
    assert sync.status.last_sync_at is not None
    assert (await store.outbox_state()).depth == 0


async def _depth_is(store: Store, n: int) -> bool:
    return bool((await store.outbox_state()).depth == n)


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
async def test_failing_sidecar_keeps_everything_and_recovers(store: Store, dapr: DaprEmulator, bulk: bool) -> None:
    dapr.failing = True
    stored = await commit_many(store, 30)
    async with syncing(store, dapr, bulk=bulk) as sync:
        await dapr.until(lambda d: sum(1 for r in d.requests if r[2] == 500) >= 3, what="three 500s")
        assert dapr.published == []
        assert (await store.outbox_state()).depth == 30
        # The emulator counts a 500 before the loop has read it: wait for the loop to show it.
        await until(lambda: sync.state()[0] == "disconnected", what="the failures to show")
        detail = sync.state()[1]
        assert "HTTP 500" in detail
        assert "ERR_PUBSUB_PUBLISH_MESSAGE" in detail
        dapr.failing = False
        await dapr.until(lambda d: len(d.published) >= 30, what="all 30 events")
        await until(lambda: _depth_is(store, 0), what="an empty outbox")
        assert (sync.metrics.registry.get_sample_value("edged_sync_events_total", {"outcome": "retry"}) or 0) > 0
    assert sorted(dapr.ids()) == sorted(e.id for e in stored)


async def test_bulk_per_entry_failures_retry_only_those(store: Store, dapr: DaprEmulator) -> None:
    stored = await commit_many(store, 40)
    failing = {e.id for e in stored[5:40:7]}
    dapr.fail_ids = set(failing)
    async with syncing(store, dapr, bulk=True, batch=100):
        await dapr.until(lambda d: len(d.published) >= 40 - len(failing), what="the entries that did not fail")
        await dapr.until(lambda d: sum(1 for r in d.requests if r[2] == 500) >= 2, what="the failures retried")
        assert not failing & set(dapr.ids())
        assert (await store.outbox_state()).depth == len(failing)
        dapr.fail_ids = set()
        await dapr.until(lambda d: len(d.published) >= 40, what="the retried entries")
    counts = Counter(dapr.ids())
    assert set(counts) == {e.id for e in stored}
    assert max(counts.values()) == 1


async def test_slow_sidecar_timeouts_resend_with_the_same_id(store: Store, dapr: DaprEmulator) -> None:
    dapr.delay = 1.0
    stored = await commit_many(store, 5, cameras=("cam-a",))
    async with syncing(store, dapr, timeout=0.2) as sync:
        await dapr.until(lambda d: len(d.published) >= 1, what="a publish the client gave up on")
        await until(lambda: sync.state()[0] == "disconnected", what="the timeout to show")
        dapr.delay = 0.0
        await until(lambda: _depth_is(store, 0), what="an empty outbox")
    by_id: dict[str, list[dict[str, Any]]] = {}
    for p in dapr.published:
        by_id.setdefault(p.id, []).append(p.event)
    assert set(by_id) == {e.id for e in stored}
    assert any(len(copies) > 1 for copies in by_id.values()), "a timed-out publish is sent again"
    for copies in by_id.values():
        assert all(c == copies[0] for c in copies), "a duplicate is the same event"


@pytest.mark.parametrize("status", [401, 403])
async def test_wrong_token_nothing_lost_clear_error_recovers(store: Store, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture, status: int) -> None:
    token_file = tmp_path / "dapr-token"
    token_file.write_text("tok-WRONG-1234\n")
    with DaprEmulator(token="tok-RIGHT-5678") as dapr:
        if status == 403:
            token_file.write_text("tok-RIGHT-5678\n")
            dapr.forbidden = True
        stored = await commit_many(store, 20)
        with caplog.at_level(logging.INFO):
            async with syncing(store, dapr, token_file=token_file) as sync:
                await until(lambda: sync.state()[0] == "error", what="the token error to show")
                detail = sync.state()[1]
                assert f"HTTP {status} from sidecar" in detail
                if status == 401:
                    assert "token rejected" in detail
                await dapr.until(lambda d: sum(1 for r in d.requests if r[2] == status) >= 2,
                                 what="a slow retry")
                assert dapr.published == []
                status_doc = await store.outbox_state()
                assert status_doc.depth == 20
                assert f"HTTP {status}" in (sync.status.last_error or "")
                # The fix: the right token in the credential file (401) or the sidecar allowing us (403).
                token_file.write_text("tok-RIGHT-5678\n")
                dapr.forbidden = False
                await dapr.until(lambda d: len(d.published) >= 20, what="all events after the fix")
                await until(lambda: sync.state()[0] == "connected", what="the error to clear")
    assert sorted(dapr.ids()) == sorted(e.id for e in stored)
    assert any(r.levelno == logging.ERROR and f"HTTP {status}" in r.getMessage() for r in caplog.records)
    assert "tok-WRONG" not in caplog.text
    assert "tok-RIGHT" not in caplog.text


async def test_token_is_sent(store: Store) -> None:
    with DaprEmulator(token="s3cret") as dapr:
        stored = await commit_many(store, 3)
        async with syncing(store, dapr, token=SecretStr("s3cret")):
            await dapr.until(lambda d: len(d.published) >= 3, what="3 events")
    assert sorted(dapr.ids()) == sorted(e.id for e in stored)


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
async def test_400_goes_to_dead_letters_and_retry_resends(store: Store, dapr: DaprEmulator, bulk: bool) -> None:
    stored = await commit_many(store, 12)
    bad = [stored[2].id, stored[3].id, stored[9].id]
    dapr.reject = dict.fromkeys(bad, 400)
    async with syncing(store, dapr, bulk=bulk):
        await dapr.until(lambda d: len(d.published) >= 9, what="the 9 good events")
        await until(lambda: _dead_is(store, 3), what="3 dead letters")
        status = await store.outbox_state()
        assert status.depth == 0
        assert {d.id for d in status.dead_letters} == set(bad)
        assert all("HTTP 400 from sidecar" in d.reason for d in status.dead_letters)
        assert not set(bad) & set(dapr.ids())
        dapr.reject = {}
        assert await store.retry_dead() == 3
        await dapr.until(lambda d: len(d.published) >= 12, what="the resent dead letters")
        await until(lambda: _depth_is(store, 0), what="an empty outbox")
    counts = Counter(dapr.ids())
    assert set(counts) == {e.id for e in stored}
    assert max(counts.values()) == 1
    assert (await store.outbox_state()).dead == 0


async def _dead_is(store: Store, n: int) -> bool:
    return bool((await store.outbox_state()).dead == n)


async def test_missing_pubsub_dead_letters_with_reason(store: Store, dapr: DaprEmulator) -> None:
    await commit_many(store, 2)
    async with syncing(store, dapr, pubsub="nope"):
        await until(lambda: _dead_is(store, 2), what="2 dead letters")
    reasons = {d.reason for d in (await store.outbox_state()).dead_letters}
    assert len(reasons) == 1
    assert "ERR_PUBSUB_NOT_FOUND" in reasons.pop()


async def test_disk_cap_drop_oldest_while_offline(tmp_path: Path, dapr: DaprEmulator,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    dapr.go_offline()
    outbox = OutboxSettings(max_bytes=128 * 1024, on_full="drop_oldest")
    async with Store(tmp_path / "edged.db", outbox, CloudEvents(DEVICE, SyncSettings()).admit) as store:
        with caplog.at_level(logging.WARNING, logger="edged.store"):
            stored = await commit_many(store, 300, pad=500)
        status = await store.outbox_state()
        assert status.evicted["max_bytes"] == status.evicted_total > 0
        assert status.store_bytes <= outbox.max_bytes
        assert "evicted" in caplog.text
        assert "max_bytes" in caplog.text
        kept = status.depth
        dapr.go_online()
        async with syncing(store, dapr, bulk=True):
            await dapr.until(lambda d: len(d.published) >= kept, what="the events that were kept")
            await until(lambda: _depth_is(store, 0), what="an empty outbox")
    assert dapr.ids() == [e.id for e in stored[-kept:]], "the newest are kept, in order"


async def test_disk_cap_reject_new_while_offline(tmp_path: Path, dapr: DaprEmulator) -> None:
    dapr.go_offline()
    outbox = OutboxSettings(max_bytes=64 * 1024, on_full="reject_new")
    async with Store(tmp_path / "edged.db", outbox, CloudEvents(DEVICE, SyncSettings()).admit) as store:
        stored = await fill_until_full(store)
        status = await store.outbox_state()
        assert status.evicted_total == 0
        assert status.depth == len(stored)
        dapr.go_online()
        async with syncing(store, dapr):
            await dapr.until(lambda d: len(d.published) >= len(stored), what="everything that was accepted")
            await until(lambda: _depth_is(store, 0), what="an empty outbox")
        await commit_many(store, 1)  # room again
    assert sorted(dapr.ids()) == sorted(e.id for e in stored)


async def test_health_waits_for_outbound(store: Store, dapr: DaprEmulator) -> None:
    await commit_many(store, 1)
    async with syncing(store, dapr):
        await dapr.until(lambda d: len(d.published) >= 1, what="one event")
    paths = [r[1] for r in dapr.requests]
    assert paths[0] == "/v1.0/healthz/outbound"
    assert paths[1] == "/v1.0/publish/cloud/edged-results"


# -- the whole daemon in a subprocess ------------------------------------------------------------------------

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def tiny_png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 256, (i // 256) % 256, 7)).save(buf, "PNG")
    return buf.getvalue()


def post_image(url: str, data: bytes, camera: str) -> str:
    """POST to the ``size`` function; the stable event id the daemon committed."""
    request = urllib.request.Request(f"{url}/v1/functions/size", data=data, method="POST",
                                     headers={"X-Camera": camera, "Content-Type": "image/png"})
    with _HTTP.open(request, timeout=30) as resp:
        event_id = resp.headers["X-Edged-Event-Id"]
        assert json.loads(resp.read())["bytes"] > 0
    assert event_id
    return str(event_id)


def http_json(url: str, method: str = "GET") -> Any:
    with _HTTP.open(urllib.request.Request(url, method=method, data=b"" if method == "POST" else None),
                    timeout=30) as resp:
        return json.loads(resp.read())


def readyz(url: str) -> tuple[int, str | None]:
    """GET /readyz: the status and the reason given when not ready."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read()).get("reason")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()).get("reason")


def sync_daemon(tmp_path: Path, dapr_url: str, **tables: Any) -> Path:
    """A config for one daemon: a frame-v1 function ``size`` (answers {"bytes": input length}), no MQTT."""
    w = Wat()
    module = write_wasm(tmp_path, "size", w.frame_module(
        f"{w.json(bytes='(local.get $len)')}\n    (drop (call $emit))\n    (i32.const 0)"))
    dapr = {"enabled": True, "url": dapr_url, "retry_min": 0.05, "retry_max": 0.5, "auth_retry": 0.3,
            "timeout": 5.0}
    config = daemon_config(tmp_path / "state", device_id="gw-e2e", dapr=dapr,
                           functions={"size": {"module": module}})
    return write_config(tmp_path / "edged.toml", merge(config, tables))


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
def test_sigkill_during_sync_loses_nothing(tmp_path: Path, bulk: bool) -> None:
    with DaprEmulator() as dapr:
        config = sync_daemon(tmp_path, dapr.url, dapr={"bulk": bulk})
        ids: list[tuple[str, str]] = []
        with run_daemon(config) as daemon:
            for i in range(30):
                camera = CAMERAS[i % len(CAMERAS)]
                ids.append((camera, post_image(daemon.url, tiny_png(i), camera)))
            dapr.wait(lambda d: len(d.published) >= 30, what="the first 30 events")
            dapr.hold()
            for i in range(30, 90):
                camera = CAMERAS[i % len(CAMERAS)]
                ids.append((camera, post_image(daemon.url, tiny_png(i), camera)))
            dapr.wait(lambda d: d.inflight >= 1, what="a publish in flight")
            daemon.kill()
            assert daemon.proc.returncode == -signal.SIGKILL
        # The held publishes now complete at the "broker", but the daemon never saw their 204s.
        dapr.release()
        dapr.wait(lambda d: d.inflight == 0, what="the held publishes to complete")
        with run_daemon(config) as daemon:
            dapr.wait(lambda d: set(d.ids()) >= {i for _, i in ids}, what="every event after the restart")
            wait_until(lambda: http_json(f"{daemon.url}/v1/outbox")["depth"] == 0, what="an empty outbox")
            status = http_json(f"{daemon.url}/v1/outbox")
            assert status["dead"] == 0
            assert status["evicted_total"] == 0
            ready = http_json(f"{daemon.url}/readyz")
            assert ready["components"]["dapr"]["state"] == "connected"
    by_id: dict[str, list[dict[str, Any]]] = {}
    for p in dapr.published:
        by_id.setdefault(p.id, []).append(p.event)
    assert set(by_id) == {i for _, i in ids}, "nothing lost, nothing invented"
    for copies in by_id.values():
        assert all(c == copies[0] for c in copies), "a duplicate carries the same id and content"
    assert any(len(copies) > 1 for copies in by_id.values()), "the publish cut off by the kill was sent again"
    # Per camera, the first copy of each event arrives in commit order.
    first_seen: dict[str, list[str]] = {}
    for p in dapr.published:
        lane = first_seen.setdefault(p.event["subject"], [])
        if p.id not in lane:
            lane.append(p.id)
    expected: dict[str, list[str]] = {}
    for camera, event_id in ids:
        expected.setdefault(camera, []).append(event_id)
    assert first_seen == expected


def test_daemon_dead_letters_and_retry_endpoint(tmp_path: Path) -> None:
    with DaprEmulator(pubsubs=()) as dapr:
        config = sync_daemon(tmp_path, dapr.url)
        with run_daemon(config) as daemon:
            ids = {post_image(daemon.url, tiny_png(i), "cam-a") for i in range(5)}
            wait_until(lambda: http_json(f"{daemon.url}/v1/outbox")["dead"] == 5, what="5 dead letters")
            status = http_json(f"{daemon.url}/v1/outbox")
            assert set(status) >= {"depth", "bytes", "store_bytes", "max_bytes", "max_age_s", "on_full",
                                   "oldest_age_s", "dead", "dead_letters", "evicted_total", "evicted",
                                   "last_sync_at", "last_error", "last_error_at"}, "the document keeps its keys"
            assert status["last_error"] is not None
            assert status["depth"] == 0
            assert {d["id"] for d in status["dead_letters"]} == ids
            assert all("404" in d["reason"] and "ERR_PUBSUB_NOT_FOUND" in d["reason"]
                       for d in status["dead_letters"])
            dapr.pubsubs.add("cloud")  # the component is there now
            assert http_json(f"{daemon.url}/v1/outbox/dead/retry", "POST") == {"requeued": 5}
            dapr.wait(lambda d: set(d.ids()) == ids, what="the dead letters resent")
    assert sorted(dapr.ids()) == sorted(ids)


def test_daemon_wrong_token_in_credentials_dir(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dapr-token").write_text("tok-WRONG-1\n")
    with DaprEmulator(token="tok-RIGHT-2") as dapr:
        config = sync_daemon(tmp_path, dapr.url, dapr={"token_file": "dapr-token"})
        with run_daemon(config, {"CREDENTIALS_DIRECTORY": str(creds)}) as daemon:
            def dapr_state() -> dict[str, Any]:
                return dict(http_json(f"{daemon.url}/readyz")["components"]["dapr"])

            ids = {post_image(daemon.url, tiny_png(i), "cam-a") for i in range(3)}
            wait_until(lambda: dapr_state()["state"] == "error", what="the token error to show")
            assert "HTTP 401 from sidecar: token rejected" in dapr_state()["detail"]
            assert http_json(f"{daemon.url}/v1/outbox")["depth"] == 3
            assert dapr.published == []
            (creds / "dapr-token").write_text("tok-RIGHT-2\n")
            dapr.wait(lambda d: set(d.ids()) == ids, what="the events after the token fix")
            log = daemon.log
    assert "token rejected" in log
    assert "tok-WRONG" not in log
    assert "tok-RIGHT" not in log


def test_daemon_reject_new_answers_503(tmp_path: Path) -> None:
    with DaprEmulator() as dapr:
        dapr.go_offline()
        config = sync_daemon(tmp_path, dapr.url, outbox={"max_bytes": 8192, "on_full": "reject_new"})
        with run_daemon(config) as daemon:
            assert readyz(daemon.url) == (200, None)
            accepted = []
            for i in range(100):
                try:
                    accepted.append(post_image(daemon.url, tiny_png(i), "cam-a"))
                except urllib.error.HTTPError as exc:
                    refused = exc
                    break
            else:
                raise AssertionError("the outbox never filled")
            assert refused.code == 503
            assert json.loads(refused.read())["error"] == "outbox_full"
            assert refused.headers["Retry-After"]
            assert http_json(f"{daemon.url}/v1/outbox")["depth"] == len(accepted)
            # New work would certainly be refused: not ready, until the sidecar takes the backlog.
            assert readyz(daemon.url) == (503, "outbox_full")
            dapr.go_online()
            dapr.wait(lambda d: set(d.ids()) == set(accepted), what="the accepted events")
            wait_until(lambda: readyz(daemon.url) == (200, None), what="ready again once the outbox drained")
