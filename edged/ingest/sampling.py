"""Frame sampling: ``max_fps`` per subscription, kept per camera, the latest frame winning.

A camera (a subscription's filter and the camera id) runs one frame at a time, and starts of its
frames are at least ``1 / max_fps`` seconds apart. A frame that comes while its camera runs a frame,
or before the interval has elapsed, waits; a newer one replaces it, and the replaced frame is
*skipped*: acked at once without being processed (the explicit exception to at-least-once). When the
running frame is done and the interval has elapsed, the waiting frame (the latest) runs.

So each camera holds at most one waiting frame (memory stays bounded by the cameras), and a frame that
does run is acked after its commit, as any other. A waiting frame is never acked by anything but a
newer frame: at shutdown or on a resumed session it is simply let go, and the broker sends it again.
The rate logic takes its clock and its timers from the caller, so it runs without an event loop in tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = ["Key", "Sampler", "Schedule", "Timer"]

log = logging.getLogger(__name__)

F = TypeVar("F")
#: A sampled stream: the subscription's filter and the camera id.
Key = tuple[str, str]
#: Idle cameras are forgotten once the table reaches this size (then twice the cameras still active).
PRUNE_AT = 64


class Timer(Protocol):
    def cancel(self) -> None: ...


#: ``schedule(delay_seconds, callback)``: run ``callback`` once after the delay (``loop.call_later``).
Schedule = Callable[[float, Callable[[], None]], Timer]


@dataclass(slots=True)
class _Camera(Generic[F]):
    running: bool = False  # a frame was handed to ``run`` and is not done yet
    next_at: float = -math.inf  # the earliest start of the camera's next frame
    waiting: F | None = None
    timer: Timer | None = field(default=None, repr=False)


class Sampler(Generic[F]):
    """Per-camera rate limits for frames ``F``.

    ``rates`` maps a subscription filter to its ``max_fps``. ``run(frame)`` is called for a frame that
    may start now (it must call ``done(key)`` when the frame is finished, whatever the outcome);
    ``skip(frame)`` for a frame replaced by a newer one (ack it and count it). Both are called from
    ``offer``, ``done`` or a timer, never re-entered.
    """

    def __init__(self, rates: Mapping[str, float], run: Callable[[F], None], skip: Callable[[F], None], *,
                 clock: Callable[[], float] = time.monotonic, schedule: Schedule | None = None) -> None:
        self._rates = dict(rates)
        self._run = run
        self._skip = skip
        self._clock = clock
        self._schedule = schedule
        self._cameras: dict[Key, _Camera[F]] = {}
        self._prune_at = PRUNE_AT
        self._closed = False

    def limits(self, filter_: str) -> bool:
        """True when frames of this subscription filter are sampled."""
        return filter_ in self._rates

    @property
    def waiting(self) -> int:
        """Frames waiting for their turn (one per camera at most)."""
        return sum(1 for cam in self._cameras.values() if cam.waiting is not None)

    @property
    def cameras(self) -> int:
        """Cameras tracked now (active ones, and idle ones not yet forgotten)."""
        return len(self._cameras)

    def offer(self, key: Key, frame: F) -> None:
        """A frame of ``key`` arrived: it runs now, or waits (skipping the frame it replaces)."""
        cam = self._cameras.get(key)
        if cam is None:
            if len(self._cameras) >= self._prune_at:
                self._prune()
            cam = self._cameras[key] = _Camera()
        now = self._clock()
        replaced, cam.waiting = cam.waiting, frame
        if replaced is not None:
            self._skip(replaced)
        self._release(key, cam, now)

    def done(self, key: Key) -> None:
        """The frame of ``key`` handed to ``run`` is finished (committed, failed, or let go)."""
        cam = self._cameras.get(key)
        if cam is None:  # its subscription is no longer sampled (reconfigure)
            return
        cam.running = False
        self._release(key, cam, self._clock())

    def reconfigure(self, rates: Mapping[str, float]) -> None:
        """New rates (a reload). A camera whose filter is no longer sampled lets its waiting frame run now;
        a changed rate applies from the next frame started."""
        self._rates = dict(rates)
        for key in [k for k in self._cameras if k[0] not in self._rates]:
            cam = self._cameras.pop(key)
            self._cancel(cam)
            if cam.waiting is not None:
                self._run(cam.waiting)

    def forget(self, stale: Callable[[F], bool]) -> list[F]:
        """Drop the waiting frames ``stale`` picks (the broker sends them again), unacked; returns them."""
        dropped = []
        for cam in self._cameras.values():
            if cam.waiting is not None and stale(cam.waiting):
                dropped.append(cam.waiting)
                cam.waiting = None
                self._cancel(cam)
        return dropped

    def close(self) -> int:
        """Stop the timers and let the waiting frames go unacked (the broker redelivers them); how many."""
        self._closed = True
        left = 0
        for cam in self._cameras.values():
            self._cancel(cam)
            left += cam.waiting is not None
            cam.waiting = None
        if left:
            log.info("%d sampled frames were waiting: not acknowledged, the broker sends them again", left)
        return left

    # -- internals ---------------------------------------------------------------------------------------

    def _release(self, key: Key, cam: _Camera[F], now: float) -> None:
        if self._closed or cam.running or cam.waiting is None:
            return
        if now < cam.next_at:
            if cam.timer is None:
                cam.timer = self._later(cam.next_at - now, lambda: self._due(key))
            return
        frame, cam.waiting = cam.waiting, None
        self._cancel(cam)
        cam.running = True
        rate = self._rates.get(key[0])
        cam.next_at = now + 1.0 / rate if rate else now
        self._run(frame)

    def _due(self, key: Key) -> None:
        cam = self._cameras.get(key)
        if cam is None:
            return
        cam.timer = None
        self._release(key, cam, self._clock())

    def _later(self, delay: float, callback: Callable[[], None]) -> Timer:
        schedule = self._schedule or asyncio.get_running_loop().call_later
        return schedule(delay, callback)

    @staticmethod
    def _cancel(cam: _Camera[F]) -> None:
        if cam.timer is not None:
            cam.timer.cancel()
            cam.timer = None

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, c in self._cameras.items() if not c.running and c.waiting is None and c.next_at <= now]:
            del self._cameras[key]
        self._prune_at = max(PRUNE_AT, 2 * len(self._cameras))
