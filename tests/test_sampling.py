"""Frame sampling (``max_fps``): the rate logic on a fake clock, then the ingest against a real mosquitto.

Unit tests drive ``Sampler`` with a clock and timers the test advances, so nothing sleeps. The
integration tests hold the first frame in the pipeline (an event) while the rest of a burst arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edged.ingest.sampling import PRUNE_AT, Key, Sampler
from edged.pipeline import Outcome, Pipeline
from edged.settings import Subscription
from tests import test_mqtt
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
from tests.waiting import until

# test_mqtt's fixtures, taken by name: the WAT functions and a mosquitto per test.
modules = test_mqtt.modules
broker = test_mqtt.broker

CAM: Key = ("cams/+/image", "cam1")


@dataclass
class FakeTimer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Clock:
    """A clock and timers that move only when the test says so."""

    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    @property
    def live(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled and not t.fired]

    def advance(self, to: float) -> None:
        self.now = to
        for timer in sorted(self.live, key=lambda t: t.at):
            if timer.at <= to:
                timer.fired = True
                timer.callback()


@dataclass
class Recorder:
    clock: Clock = field(default_factory=Clock)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def sampler(self, rates: dict[str, float]) -> Sampler[str]:
        return Sampler(rates, self.ran.append, self.skipped.append, clock=self.clock,
                       schedule=self.clock.schedule)


# -- the rate logic ---------------------------------------------------------------------------------------


def test_the_first_frame_runs_and_the_latest_waiting_frame_wins() -> None:
    rec = Recorder()
    sampler = rec.sampler({CAM[0]: 10.0})  # one start per 0.1 s
    sampler.offer(CAM, "a")
    assert rec.ran == ["a"]
    rec.clock.now = 0.01
    for name in "bcd":
        sampler.offer(CAM, name)
    assert rec.skipped == ["b", "c"]  # each replaced by the next; d waits
    assert sampler.waiting == 1
    rec.clock.now = 0.05
    sampler.done(CAM)  # a is done, but its interval has not elapsed
    assert rec.ran == ["a"]
    assert [t.at for t in rec.clock.live] == [pytest.approx(0.1)]
    rec.clock.advance(0.1)
    assert rec.ran == ["a", "d"]
    assert sampler.waiting == 0
    # While d runs (past its interval), e waits for d to be done, then runs at once.
    rec.clock.now = 0.3
    sampler.offer(CAM, "e")
    assert rec.ran == ["a", "d"]
    sampler.done(CAM)
    assert rec.ran == ["a", "d", "e"]
    assert rec.skipped == ["b", "c"]


def test_a_frame_after_the_interval_runs_at_once_and_one_before_it_waits_for_its_timer() -> None:
    rec = Recorder()
    sampler = rec.sampler({CAM[0]: 2.0})  # 0.5 s
    sampler.offer(CAM, "a")
    sampler.done(CAM)
    rec.clock.now = 0.6
    sampler.offer(CAM, "b")
    assert rec.ran == ["a", "b"]
    sampler.done(CAM)
    rec.clock.now = 0.7
    for name in "cdefg":
        sampler.offer(CAM, name)
    assert len(rec.clock.live) == 1  # one timer per camera, not one per frame
    rec.clock.advance(1.0)
    assert rec.ran == ["a", "b"]  # next start at 0.6 + 0.5
    rec.clock.advance(1.1)
    assert rec.ran == ["a", "b", "g"]
    assert rec.skipped == ["c", "d", "e", "f"]


def test_cameras_and_subscriptions_are_sampled_apart() -> None:
    rec = Recorder()
    other_camera, other_filter = (CAM[0], "cam2"), ("nvr/#", "cam1")
    sampler = rec.sampler({CAM[0]: 1.0, other_filter[0]: 1.0})
    for key, name in ((CAM, "a"), (other_camera, "b"), (other_filter, "c"), (CAM, "d")):
        sampler.offer(key, name)
    assert rec.ran == ["a", "b", "c"]
    assert sampler.waiting == 1
    assert sampler.limits(CAM[0])
    assert not sampler.limits("unsampled/+")


def test_a_reload_without_the_rate_lets_the_waiting_frame_run_and_a_new_rate_applies_next() -> None:
    rec = Recorder()
    fast = ("fast/+", "cam1")
    sampler = rec.sampler({CAM[0]: 1.0, fast[0]: 1.0})
    sampler.offer(CAM, "a")
    sampler.offer(CAM, "b")
    sampler.offer(fast, "x")
    sampler.done(fast)
    sampler.offer(fast, "y")
    assert rec.ran == ["a", "x"]
    sampler.reconfigure({fast[0]: 100.0})
    assert rec.ran == ["a", "x", "b"]  # CAM is no longer sampled: b runs beside a
    assert [t.at for t in rec.clock.live] == [pytest.approx(1.0)]  # fast's timer stays as it was
    sampler.done(CAM)  # a finishing after the reload changes nothing
    rec.clock.advance(1.0)
    assert rec.ran == ["a", "x", "b", "y"]  # y waited for the interval that was in force
    sampler.done(fast)
    rec.clock.now = 1.02
    sampler.offer(fast, "z")
    assert rec.ran[-1] == "z"  # the new rate: 0.01 s apart
    assert rec.skipped == []


def test_frames_let_go_are_never_skipped() -> None:
    rec = Recorder()
    sampler = rec.sampler({CAM[0]: 1.0})
    other = (CAM[0], "cam2")
    sampler.offer(CAM, "old-a")
    sampler.offer(CAM, "old-b")
    sampler.offer(other, "new-a")
    sampler.offer(other, "new-b")
    # A resumed session: the broker sends the old connection's frames again.
    assert sampler.forget(lambda f: f.startswith("old")) == ["old-b"]
    assert sampler.waiting == 1
    # Shutdown: what waits is let go unacknowledged, and no timer is left.
    assert sampler.close() == 1
    assert rec.clock.live == []
    assert rec.skipped == []
    sampler.done(CAM)
    assert rec.ran == ["old-a", "new-a"]


def test_idle_cameras_are_forgotten() -> None:
    rec = Recorder()
    sampler = rec.sampler({CAM[0]: 10.0})
    for i in range(10 * PRUNE_AT):
        key = (CAM[0], f"cam{i}")
        sampler.offer(key, f"f{i}")
        sampler.done(key)
        rec.clock.now += 0.01  # each camera is idle again 0.1 s later
    assert len(rec.ran) == 10 * PRUNE_AT
    assert sampler.cameras <= 2 * PRUNE_AT


async def test_on_a_loop_the_waiting_frame_runs_when_its_interval_has_elapsed() -> None:
    ran: list[str] = []
    clock = Clock()
    sampler: Sampler[str] = Sampler({CAM[0]: 20.0}, ran.append, pytest.fail, clock=clock)  # the loop's timers
    sampler.offer(CAM, "a")
    sampler.done(CAM)
    sampler.offer(CAM, "b")
    assert ran == ["a"]
    clock.now = 0.05  # when the loop's timer fires (after 0.05 s), the interval has elapsed
    await until(lambda: ran == ["a", "b"], 10, "the waiting frame to run")
    assert sampler.close() == 0


# -- against mosquitto --------------------------------------------------------------------------------------


class HeldPipeline(Pipeline):
    """Holds every frame until ``gate`` is set; records the order frames start in."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.started: list[str] = []

    async def process(self, **kwargs: Any) -> Outcome:  # type: ignore[override]
        self.started.append(kwargs["sha256"])
        await self.gate.wait()
        return await super().process(**kwargs)


def sampled(max_fps: float | None) -> list[dict[str, Any]]:
    sub: dict[str, Any] = {"topic": "edged/cameras/+/image", "functions": ["size"], "qos": 1}
    if max_fps is not None:
        sub["max_fps"] = max_fps
    return [sub]


async def test_a_burst_runs_its_first_and_last_frame_and_acks_every_frame(
        tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker, subscriptions=sampled(50.0))
    burst = [frame(i) for i in range(30)]
    with Peer(broker, "consumer", subscribe=("edged/results/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings, HeldPipeline) as h:
            held = h.pipeline
            assert isinstance(held, HeldPipeline)
            await subscribed(h, broker, settings, "a connection")
            for data in burst:
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
            skipped = len(burst) - 2  # all but the first (running) and the last (waiting)
            await until(lambda: sample(h, "edged_frames_skipped_total", camera="cam1", reason="sampled") == skipped,
                        20, "the skipped frames")
            assert h.ingest.inflight == 2
            held.gate.set()
            await until(lambda: sha(burst[-1]) in results_by_sha(consumer.received()), 20, "the last frame's result")
            await until(lambda: h.ingest.inflight == 0, 10, "every frame acked")
            assert held.started == [sha(burst[0]), sha(burst[-1])]
            assert set(results_by_sha(consumer.received())) == {sha(burst[0]), sha(burst[-1])}
            assert sample(h, "edged_mqtt_frames_total", outcome="processed") == 2
            assert sample(h, "edged_frames_skipped_total", camera="cam1", reason="sampled") == skipped

        # The same session again: nothing comes back, every frame was acknowledged.
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
            sentinel = frame(999)
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam2"), sentinel)
            await until(lambda: sha(sentinel) in results_by_sha(consumer.received()), 20, "the sentinel's result")
            assert sample(h, "edged_mqtt_frames_total", outcome="processed") == 1
            assert sample(h, "edged_mqtt_frames_total", outcome="duplicate") == 0
            assert sample(h, "edged_frames_skipped_total", camera="cam1", reason="sampled") == 0


async def test_without_max_fps_every_frame_of_a_burst_runs(
        tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker, subscriptions=sampled(None))
    burst = [frame(i) for i in range(30)]
    with Peer(broker, "consumer", subscribe=("edged/results/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
            for data in burst:
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
            await until(lambda: len(results_by_sha(consumer.received())) == len(burst), 30, "every result")
            assert sample(h, "edged_mqtt_frames_total", outcome="processed") == len(burst)
            assert sample(h, "edged_frames_skipped_total", camera="cam1", reason="sampled") == 0


async def test_a_frame_waiting_at_shutdown_is_redelivered(
        tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker, subscriptions=sampled(50.0))
    first, waiting = frame(1), frame(2)
    with Peer(broker, "consumer", subscribe=("edged/results/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings, HeldPipeline) as h:
            held = h.pipeline
            assert isinstance(held, HeldPipeline)
            await subscribed(h, broker, settings, "a connection")
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), first)
            await until(lambda: held.started == [sha(first)], 10, "the first frame held")
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), waiting)
            await until(lambda: h.ingest.inflight == 2, 10, "the second frame waiting")
        assert held.started == [sha(first)]
        assert results_by_sha(consumer.received()) == {}

        async with running(settings) as h:
            await until(lambda: {sha(first), sha(waiting)} <= set(results_by_sha(consumer.received())), 20,
                        "both frames' results")
            assert sample(h, "edged_frames_skipped_total", camera="cam1", reason="sampled") == 0


async def test_a_reload_without_max_fps_runs_the_waiting_frame(
        tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker, subscriptions=sampled(0.01))  # one frame per 100 s
    first, second = frame(1), frame(2)
    with Peer(broker, "consumer", subscribe=("edged/results/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings, HeldPipeline) as h:
            held = h.pipeline
            assert isinstance(held, HeldPipeline)
            held.gate.set()
            await subscribed(h, broker, settings, "a connection")
            for data in (first, second):
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
            await until(lambda: sha(first) in results_by_sha(consumer.received()), 20, "the first result")
            await until(lambda: h.ingest.inflight == 1, 10, "the second frame waiting its turn")
            assert held.started == [sha(first)]
            h.ingest.resubscribe([Subscription(topic="edged/cameras/+/image", functions=("size",))])
            await until(lambda: sha(second) in results_by_sha(consumer.received()), 20, "the second result")
            assert held.started == [sha(first), sha(second)]
            assert sample(h, "edged_frames_skipped_total", camera="cam1", reason="sampled") == 0
