"""Poison frames, readiness and the MQTT side of image errors (issue 11, items 7 and 9, and the errors of 1-2).

- The store counts attempts on disk, deletes them with the commit, prunes old ones, keeps the quarantine
  count; ``Store.full`` says when reject_new refuses everything.
- The guard: a frame with a count runs alone; its attempt is counted once per process and taken back
  when it leaves without a crash; at ``max_attempts`` it is quarantined.
- Through MQTT ingest (real mosquitto): what the device can never process is an error event and acked;
  what may pass later is not acked (the broker redelivers it).
- The real daemon, SIGKILLed three times during a hanging call on one frame, quarantines it on the
  fourth start and acks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edged.decode_guard import MAX_JPEG_SCANS
from edged.errors import (
    DecodeCancelled,
    DecodeTimeout,
    EdgedError,
    FunctionError,
    OutboxFull,
    Overloaded,
    Quarantined,
    TooManyPixels,
)
from edged.events import NewEvent
from edged.frames import Frame
from edged.ingest.poison import PoisonGuard
from edged.metrics import Metrics
from edged.settings import OutboxSettings, SyncSettings
from edged.store import Store
from edged.store.attempts import KEEP_SECONDS
from edged.sync.cloudevents import CloudEvents
from edged.wasm.pool import CallResult, FunctionPool
from tests.configs import daemon_config, write_config
from tests.daemon import run_daemon
from tests.images import scan_bomb
from tests.mosquitto import Mosquitto, Peer
from tests.test_mqtt import (
    FRAMES_TOPIC,
    frame,
    make_settings,
    results_by_sha,
    running,
    sample,
    sha,
    subscribed,
)
from tests.waiting import until, wait_until
from tests.wat import Wat, write_wasm

SHA_A, SHA_B, SHA_C = "aa" * 32, "bb" * 32, "cc" * 32


class Clock:
    def __init__(self, now: float = 1.7e9) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_store(path: Path, clock: Clock | None = None, metrics: Metrics | None = None, **outbox: Any) -> Store:
    return Store(path, OutboxSettings(**outbox), CloudEvents("gw", SyncSettings()).admit, metrics,
                 clock=clock or Clock())


def error_event(code: str) -> NewEvent:
    return NewEvent("", "error", {"camera": "cam", "kind": "error", "error": {"code": code, "detail": "x"}})


async def commit(store: Store, sha256: str, *events: NewEvent) -> None:
    await store.commit_input(transport="mqtt", camera="cam", sha256=sha256, received_at=1.7e9, correlation=None,
                             events=list(events) or [error_event("bad_image")], publish_mqtt=False)


def attempt_rows(path: Path) -> list[tuple[int, int]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT frame, n FROM attempts").fetchall()
    finally:
        con.close()


# -- the store -------------------------------------------------------------------------------------------


async def test_attempts_are_on_disk_and_go_with_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    async with make_store(path) as store:
        assert [await store.count_attempt("cam", SHA_A) for _ in range(2)] == [1, 2]
        # Frames counted at once share transactions; each gets its own count.
        counts = await asyncio.gather(*(store.count_attempt("cam", f"{i:064x}") for i in range(20)))
        assert counts == [1] * 20
        assert store.attempts("cam", SHA_A) == 2
        assert store.attempts("other-cam", SHA_A) == 0
    assert len(attempt_rows(path)) == 21  # written through, not only in memory
    async with make_store(path) as store:
        assert store.attempts("cam", SHA_A) == 2  # as a crash would leave it
        await commit(store, SHA_A)
        assert store.attempts("cam", SHA_A) == 0
        for i in range(20):
            assert await store.count_attempt("cam", f"{i:064x}", -1) == 0  # taken back: row gone
    assert attempt_rows(path) == []


@pytest.mark.parametrize("refused", [False, True])
async def test_attempts_queued_behind_a_commit_ride_along_or_survive_its_rollback(tmp_path: Path,
                                                                                    refused: bool) -> None:
    path = tmp_path / "edged.db"
    async with make_store(path, max_bytes=4096 if refused else 10**8, on_full="reject_new") as store:
        if refused:
            with contextlib.suppress(OutboxFull):
                for i in range(100):
                    await commit(store, f"{i:064x}")
            assert store.full
        # Hold the writer thread, so the commit and then the attempts queue up behind it.
        writer = threading.Event()
        held = store._db.submit(writer.wait, 10)  # noqa: SLF001 (the store's writer thread)
        committing = asyncio.create_task(commit(store, SHA_A))
        counting = [asyncio.create_task(store.count_attempt("cam", f"{i:064x}")) for i in range(200, 208)]
        await asyncio.sleep(0)  # let every task queue its job
        writer.set()
        assert held.result(10)
        if refused:
            with pytest.raises(OutboxFull):
                await committing
        else:
            await committing
        assert await asyncio.gather(*counting) == [1] * 8
    assert len(attempt_rows(path)) == 8


async def test_old_attempts_are_pruned(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "edged.db"
    async with make_store(path, clock) as store:
        await store.count_attempt("cam", SHA_A)
        clock.now += KEEP_SECONDS + 1
    async with make_store(path, clock) as store:
        assert store.attempts("cam", SHA_A) == 0
        await store.count_attempt("cam", SHA_B)
    assert len(attempt_rows(path)) == 1


async def test_quarantine_count_is_persisted_and_shown(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    metrics = Metrics()
    async with make_store(path, metrics=metrics) as store:
        await commit(store, SHA_A, error_event(Quarantined.code))
        await commit(store, SHA_B, error_event("bad_image"))
        assert (await store.outbox_state()).quarantined == 1
        assert metrics.registry.get_sample_value("edged_mqtt_quarantined_total") == 1
    async with make_store(path) as store:
        assert (await store.outbox_state()).quarantined == 1


async def test_full_while_reject_new_refuses_and_ready_again_once_space_is_freed(tmp_path: Path) -> None:
    async with make_store(tmp_path / "edged.db", max_bytes=4096, on_full="reject_new") as store:
        assert not store.full
        committed = 0
        while True:
            assert committed < 100, "the outbox never filled"
            try:
                await commit(store, f"{committed:064x}")
            except OutboxFull:
                break
            committed += 1
        assert committed > 0
        assert store.full
        assert store.full  # stays so: nothing freed
        batch = await store.outbox_batch(1, now=2e9)
        await store.outbox_ack([batch[0].id])  # the sidecar took one: its bytes are history now
        assert not store.full
        await commit(store, "ff" * 32)  # which the next commit evicts
    async with make_store(tmp_path / "other.db", max_bytes=4096, on_full="drop_oldest") as store:
        for i in range(40):
            await commit(store, f"{i:064x}")
        assert not store.full  # drop_oldest never refuses


# -- the guard ---------------------------------------------------------------------------------------------


async def test_a_suspect_runs_alone_and_counts_once(tmp_path: Path) -> None:
    async with make_store(tmp_path / "edged.db") as store:
        await store.count_attempt("cam", SHA_C)  # left by a crash
        guard = PoisonGuard(store, max_attempts=3)
        entered: list[str] = []
        release = {name: asyncio.Event() for name in ("n1", "s", "n2")}

        async def run(name: str, sha256: str) -> None:
            async with guard.frame("cam", sha256, qos=1) as attempt, attempt():
                entered.append(name)
                await release[name].wait()

        n1 = asyncio.create_task(run("n1", SHA_A))
        await until(lambda: entered == ["n1"], 5, "n1 to run")
        s = asyncio.create_task(run("s", SHA_C))
        await until(lambda: guard.gate.waiting_alone == 1, 5, "the suspect to wait for its turn")
        n2 = asyncio.create_task(run("n2", SHA_B))
        await until(lambda: guard.gate.waiting == 1, 5, "n2 to wait behind the suspect")
        assert entered == ["n1"]
        release["n1"].set()
        await until(lambda: entered == ["n1", "s"], 5, "the suspect to run, alone")
        assert store.attempts("cam", SHA_C) == 2
        release["s"].set()
        await until(lambda: entered == ["n1", "s", "n2"], 5, "n2 to run after it")
        release["n2"].set()
        await asyncio.gather(n1, s, n2)
        # None was committed: each took its attempt back on leaving (a graceful end is no crash).
        assert [store.attempts("cam", h) for h in (SHA_A, SHA_C, SHA_B)] == [0, 1, 0]

        # Retries within one stay count once; QoS 0 frames are not counted at all.
        async with guard.frame("cam", SHA_A, qos=1) as attempt:
            for _ in range(3):
                async with attempt():
                    pass
            assert store.attempts("cam", SHA_A) == 1
            attempt.committed()
        async with guard.frame("cam", SHA_B, qos=0) as attempt, attempt():
            assert store.attempts("cam", SHA_B) == 0


async def test_the_dedupe_look_up_counts_the_attempt_in_the_same_writer_job(tmp_path: Path) -> None:
    metrics = Metrics()
    async with make_store(tmp_path / "edged.db", metrics=metrics) as store:
        guard = PoisonGuard(store, max_attempts=3)

        def jobs() -> float:
            return metrics.registry.get_sample_value("edged_store_commits_total") or 0.0

        async with guard.frame("cam", SHA_A, qos=1) as attempt:
            before = jobs()
            assert await attempt.recent_input(60.0) is None  # not seen before: counted on the way
            assert jobs() - before == 1
            assert store.attempts("cam", SHA_A) == 1
            async with attempt():  # already counted: entering counts nothing more
                assert store.attempts("cam", SHA_A) == 1
            assert await attempt.recent_input(60.0) is None  # a retry's look-up counts nothing either
            assert store.attempts("cam", SHA_A) == 1
        assert store.attempts("cam", SHA_A) == 0  # left uncommitted without a crash: taken back

        await commit(store, SHA_B)
        async with guard.frame("cam", SHA_B, qos=1) as attempt:
            earlier = await attempt.recent_input(60.0)  # a redelivery: answered, not counted
            assert earlier is not None
            assert [e.kind for e in earlier] == ["error"]
            assert store.attempts("cam", SHA_B) == 0
        assert attempt_rows(tmp_path / "edged.db") == []

        await store.count_attempt("cam", SHA_C)  # a suspect: counted only once it runs, alone
        async with guard.frame("cam", SHA_C, qos=1) as attempt:
            assert await attempt.recent_input(60.0) is None
            assert store.attempts("cam", SHA_C) == 1
            async with attempt():
                assert store.attempts("cam", SHA_C) == 2


async def test_max_attempts_quarantines_without_running(tmp_path: Path) -> None:
    async with make_store(tmp_path / "edged.db") as store:
        for _ in range(3):
            await store.count_attempt("cam", SHA_A)
        guard = PoisonGuard(store, max_attempts=3)
        ran = False
        with pytest.raises(Quarantined, match="cut short by a crash 3 times"):
            async with guard.frame("cam", SHA_A, qos=1) as attempt, attempt():
                ran = True
        assert not ran
        assert store.attempts("cam", SHA_A) == 3  # until the error event is committed


# -- through MQTT ingest --------------------------------------------------------------------------------------

Refusal = type[EdgedError]


class RefusingPool(FunctionPool):
    """A real pool that raises, for the payloads in ``refusals``, what the decoder, the memory budget or a
    shutdown would raise; ``refused`` counts its refusals."""

    refusals: ClassVar[dict[bytes, Refusal]] = {}
    refused: ClassVar[int] = 0

    async def decode_and_call(self, data: bytes, max_pixels: int, name: str, *, digests: bool = False,
                              sha256: str | None = None) -> tuple[Frame, CallResult | FunctionError]:
        error = self.refusals.get(data)
        if error is not None:
            type(self).refused += 1
            raise error(f"test: {error.code}")
        return await super().decode_and_call(data, max_pixels, name, digests=digests, sha256=sha256)


def refusing_pool(refusals: dict[bytes, Refusal]) -> type[RefusingPool]:
    return type("RefusingPoolForTest", (RefusingPool,), {"refusals": refusals, "refused": 0})


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("wasm")
    size = Wat()
    size_run = size.json(w="(i32.load offset=8 (local.get $ptr))", h="(i32.load offset=12 (local.get $ptr))")
    hang = Wat()
    started = hang.ptr_len("hang: call started")
    return {
        "size": write_wasm(directory, "size", size.frame_module(f"{size_run}\n    (drop (call $emit)) (i32.const 0)")),
        # Logs that it started, then spins until its (long) timeout.
        "hang": write_wasm(directory, "hang", hang.frame_module(
            f"(drop (call $log (i32.const 20) {started})) (loop $spin (br $spin)) (i32.const 0)")),
    }


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running_broker:
        yield running_broker


async def test_images_the_device_can_never_process_are_error_events_and_acked(
        tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> None:
    # One frame at a time, so a redelivery would come before the good frame of the second run.
    settings = make_settings(tmp_path, {"size": modules["size"]}, broker, pool={"workers": 1, "queue": 1})
    never_fits, too_slow = frame(1), frame(2)
    # A real scan bomb goes through the real decode guard; the budget's "never fits" and a decode past
    # the deadline are raised by the pool, as the budget and the decoder raise them.
    pool = refusing_pool({never_fits: TooManyPixels, too_slow: DecodeTimeout})
    bad = {"too-complex": scan_bomb(MAX_JPEG_SCANS + 10), "never-fits": never_fits, "too-slow": too_slow}
    with Peer(broker, "consumer", subscribe=("edged/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings, pool_cls=pool) as h:
            await subscribed(h, broker, settings, "a connection")
            for name, data in bad.items():
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera=name), data)
            await until(lambda: len(consumer.received("edged/errors/")) == 3, 20, "3 error events")
            await until(lambda: sample(h, "edged_mqtt_published_total", outcome="ok") == 3, 10, "their PUBACKs")
        errors = {m.topic.split("/")[-1]: json.loads(m.payload) for m in consumer.received("edged/errors/")}
        assert {cam: e["error"]["code"] for cam, e in errors.items()} == {
            "too-complex": "too_complex", "never-fits": "too_many_pixels", "too-slow": "timeout"}
        assert {cam: e["source"]["sha256"] for cam, e in errors.items()} == {cam: sha(d) for cam, d in bad.items()}

        async with running(settings, pool_cls=pool) as h:  # acked: nothing comes back
            await subscribed(h, broker, settings, "a connection")
            good = frame(3)
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), good)
            await until(lambda: sha(good) in results_by_sha(consumer.received()), 20, "the good frame's result")
            assert sample(h, "edged_mqtt_frames_total", outcome="rejected") == 0
            assert sample(h, "edged_mqtt_frames_total", outcome="duplicate") == 0
            assert h.store.attempts("cam1", sha(good)) == 0  # committed: no attempt left behind
        assert len(consumer.received("edged/errors/")) == 3


@pytest.mark.parametrize("refusal", [Overloaded, DecodeCancelled])
async def test_refusals_that_may_pass_later_are_not_acked(tmp_path: Path, modules: dict[str, Path],
                                                          broker: Mosquitto, refusal: Refusal) -> None:
    settings = make_settings(tmp_path, {"size": modules["size"]}, broker)
    data = frame(7)
    pool = refusing_pool({data: refusal})
    with Peer(broker, "consumer", subscribe=("edged/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings, pool_cls=pool) as h:
            await subscribed(h, broker, settings, "a connection")
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
            await until(lambda: pool.refused >= 2, 10, "the frame refused and retried")
            assert await h.store.recent_input("cam1", sha(data), 600) is None  # nothing committed
            assert h.ingest.inflight == 1  # held, unacked
        # Stopped while refusing: the broker delivers the frame again, and now it passes.
        assert h.store.attempts("cam1", sha(data)) == 0  # a refusal is no crash: the attempt was taken back
        async with running(settings) as h:
            await until(lambda: sha(data) in results_by_sha(consumer.received()), 20, "the redelivered frame")
            assert sample(h, "edged_mqtt_frames_total", outcome="processed") == 1
        assert consumer.received("edged/errors/") == []


async def test_a_frame_left_with_max_attempts_is_quarantined_and_acked(tmp_path: Path, modules: dict[str, Path],
                                                                       broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, {"size": modules["size"]}, broker, max_attempts=2)
    data = frame(11)
    async with make_store(settings.state_dir / "edged.db", Clock(time.time())) as store:
        for _ in range(2):  # what two crashes during its calls leave behind
            await store.count_attempt("cam1", sha(data))
    with Peer(broker, "consumer", subscribe=("edged/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
            await until(lambda: len(consumer.received("edged/errors/cam1")) == 1, 20, "the quarantine event")
            assert sample(h, "edged_mqtt_frames_total", outcome="quarantined") == 1
            assert sample(h, "edged_mqtt_quarantined_total") == 1
            assert (await h.store.outbox_state()).quarantined == 1
            assert h.store.attempts("cam1", sha(data)) == 0
        event = json.loads(consumer.received("edged/errors/cam1")[0].payload)
        assert event["error"]["code"] == "quarantined"
        assert event["source"]["sha256"] == sha(data)
        assert results_by_sha(consumer.received()) == {}  # never run


# -- the real daemon ---------------------------------------------------------------------------------------


def hang_config(tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> Path:
    config = daemon_config(
        tmp_path / "state", device_id="gw-poison",
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port, "client_id": "edged-poison-test",
              "keepalive": 10, "reconnect_min_delay": 0.05, "reconnect_max_delay": 0.5,
              "subscriptions": [{"topic": "edged/cameras/+/image", "functions": ["hang"], "qos": 1},
                                {"topic": "edged/checks/+/image", "functions": ["size"], "qos": 1}]},
        functions={"hang": {"module": modules["hang"], "timeout_ms": 600_000},
                   "size": {"module": modules["size"]}},
    )
    return write_config(tmp_path / "edged.toml", config)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def metric(url: str, sample_name: str) -> float:
    """One sample of /metrics, e.g. ``edged_mqtt_frames_total{outcome="processed"}``; 0 when absent."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample_name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def mqtt_connected(url: str) -> bool:
    return bool(get_json(f"{url}/readyz")["components"]["mqtt"]["state"] == "connected")


def test_sigkilled_three_times_during_a_call_the_fourth_start_quarantines(tmp_path: Path,
                                                                          modules: dict[str, Path]) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        config = hang_config(tmp_path, modules, broker)
        db = tmp_path / "state" / "edged.db"
        poison = frame(13)
        with Peer(broker, "consumer", subscribe=("edged/errors/#", "edged/results/#")) as consumer, \
                Peer(broker, "camera") as camera:
            for start in (1, 2, 3):
                with run_daemon(config) as daemon:
                    if start == 1:
                        wait_until(lambda: mqtt_connected(daemon.url), 20, "a connection")
                        camera.publish(FRAMES_TOPIC.format(camera="cam1"), poison)
                    daemon.wait_log("hang: call started")
                    assert [n for _, n in attempt_rows(db)] == [start]  # on disk before the call
                    daemon.kill()
            with run_daemon(config) as daemon:
                consumer.wait_for(lambda m: any(x.topic == "edged/errors/cam1" for x in m), 30, "the quarantine")
                assert "hang: call started" not in daemon.log
                assert get_json(f"{daemon.url}/v1/outbox")["quarantined"] == 1
                assert metric(daemon.url, "edged_mqtt_quarantined_total") == 1
            (error,) = consumer.received("edged/errors/")
            event = json.loads(error.payload)
            assert event["error"]["code"] == "quarantined"
            assert event["source"]["sha256"] == sha(poison)
            assert attempt_rows(db) == []

            with run_daemon(config) as daemon:  # a fifth start: acked, so not delivered again
                wait_until(lambda: mqtt_connected(daemon.url), 20, "a connection")
                check = frame(14)
                camera.publish("edged/checks/cam1/image", check)
                consumer.wait_for(lambda m: sha(check) in results_by_sha(m), 20, "the check frame's result")
                assert metric(daemon.url, 'edged_mqtt_frames_total{outcome="processed"}') == 1  # the check alone
                assert metric(daemon.url, 'edged_mqtt_frames_total{outcome="duplicate"}') == 0
                assert "hang: call started" not in daemon.log
                assert get_json(f"{daemon.url}/v1/outbox")["quarantined"] == 1
            assert len(consumer.received("edged/errors/")) == 1
            assert attempt_rows(db) == []  # the check frame succeeded: no attempt row behind

