"""Poison frames: an MQTT frame that keeps crashing edged is run at most ``mqtt.max_attempts`` times.

Before a frame is decoded and its functions run, its attempt is counted in the store, on disk
(``Store.count_attempt``). Committing the frame deletes the count, so a count found at the next start
means processing was cut short by a crash (OOM kill, SIGKILL, power loss). A frame whose count reached
``max_attempts`` is not run again: the guard raises Quarantined, the pipeline commits it as an error
event (published on ``{prefix}/errors/{camera}``) and the frame is acked.

A frame with a count (a suspect) runs alone. Frames that were running beside a poison frame when it
crashed come back as suspects too; running each alone means every later crash is counted against the
frame that caused it, so the neighbours of a poison frame are not set aside with it.

Most frames (no count yet) are counted in the same writer job as their dedupe look-up
(``FrameAttempt.recent_input``, ``Store.recent_or_count``): one trip to the store's writer per frame, not
two. Such a frame is counted before it waits at the gate, so a crash while it waits counts it as one of the
neighbours above. A suspect is counted only once its turn to run alone came.

An attempt is counted once per frame per process: a retry after Overloaded or OutboxFull is not a new
attempt, and a frame that leaves this process uncommitted without a crash (refused, shutdown) takes
its attempt back. QoS 0 frames are not counted: the broker never delivers them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from edged.errors import EdgedError, Quarantined
from edged.events import StoredEvent

__all__ = ["AttemptStore", "FrameAttempt", "PoisonGuard", "RunGate"]

log = logging.getLogger(__name__)


class AttemptStore(Protocol):
    """The part of the store the guard needs (edged.store.Store)."""

    def attempts(self, camera: str, sha256: str) -> int: ...

    async def count_attempt(self, camera: str, sha256: str, step: int = 1) -> int: ...

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None: ...

    async def recent_or_count(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None: ...


class RunGate:
    """Frames run together (``together``) or one at a time (``alone``). A frame waiting to run alone
    holds back frames that have not started yet, so it gets its turn under a steady stream."""

    def __init__(self) -> None:
        self._running = 0
        self._alone = False
        self._waiting = 0
        self._waiting_alone = 0
        self._changed = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Frames waiting to run together with others."""
        return self._waiting

    @property
    def waiting_alone(self) -> int:
        """Frames waiting to run alone."""
        return self._waiting_alone

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._changed.clear()
            await self._changed.wait()

    @contextlib.asynccontextmanager
    async def together(self) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            await self._until(lambda: not self._alone and not self._waiting_alone)
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._changed.set()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        self._waiting_alone += 1
        try:
            await self._until(lambda: not self._alone and self._running == 0)
        finally:
            self._waiting_alone -= 1
            self._changed.set()
        self._alone = True
        try:
            yield
        finally:
            self._alone = False
            self._changed.set()


class FrameAttempt:
    """The guard of one frame for as long as this process holds it (retries included): ``async with``
    it around the frame's stay, pass it to ``Pipeline.process`` as ``guard``, and call ``committed()``
    once the frame is committed. Leaving it uncommitted takes back the attempt counted here."""

    def __init__(self, guard: PoisonGuard, camera: str, sha256: str, *, count: bool) -> None:
        self._guard = guard
        self._camera = camera
        self._sha256 = sha256
        self._counted = not count
        self._counted_here = False
        self._suspect = False

    async def __aenter__(self) -> FrameAttempt:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._counted_here:
            return
        self._counted_here = False
        try:
            await self._guard.store.count_attempt(self._camera, self._sha256, -1)
        except EdgedError as error:  # the next start counts one attempt too many: logged, not fatal
            log.error("could not take back the attempt of frame %s from %s: %s", self._sha256[:12], self._camera,
                      error.detail)

    def committed(self) -> None:
        """The frame is committed (its count deleted with it): nothing to take back."""
        self._counted_here = False

    async def recent_input(self, window_s: float) -> list[StoredEvent] | None:
        """The dedupe look-up of this frame (``Store.recent_input``). When it finds nothing, a frame still to be
        counted that is no suspect is counted in the same writer job."""
        store = self._guard.store
        if self._counted or store.attempts(self._camera, self._sha256):
            return await store.recent_input(self._camera, self._sha256, window_s)
        earlier = await store.recent_or_count(self._camera, self._sha256, window_s)
        if earlier is None:
            self._counted = self._counted_here = True
        return earlier

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        guard = self._guard
        if not self._counted:
            tried = guard.store.attempts(self._camera, self._sha256)
            if tried >= guard.max_attempts:
                log.error("frame %s from %s was cut short by a crash %d times (mqtt.max_attempts = %d): "
                          "quarantined, not run again", self._sha256[:12], self._camera, tried, guard.max_attempts)
                raise Quarantined(f"processing this frame was cut short by a crash {tried} times "
                                  f"(mqtt.max_attempts = {guard.max_attempts}); it is not run again")
            self._suspect = tried > 0
        gate = guard.gate.alone() if self._suspect else guard.gate.together()
        async with gate:
            if not self._counted:
                n = await guard.store.count_attempt(self._camera, self._sha256)
                self._counted = self._counted_here = True
                if self._suspect:
                    log.warning("frame %s from %s was cut short by a crash before: running it alone "
                                "(attempt %d of %d)", self._sha256[:12], self._camera, n, guard.max_attempts)
            yield


class PoisonGuard:
    """Counts the attempts of MQTT frames and sets poison frames aside; one per ingest component."""

    def __init__(self, store: AttemptStore, max_attempts: int) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.gate = RunGate()

    def frame(self, camera: str, sha256: str, qos: int) -> FrameAttempt:
        """The guard of one frame (QoS 0 frames run under the gate but are not counted)."""
        return FrameAttempt(self, camera, sha256, count=qos > 0)
