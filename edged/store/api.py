"""The Store: the one object the rest of edged uses to keep inputs, events and the cloud outbox.

It owns the database (edged.store.db) and hands each job to its room: events (commit, dedupe, MQTT
marks), attempts (MQTT frames started and not committed), outbox (batches, acks, dead letters), space
(caps, expiry), history (reads on a connection of their own) and live (committed events to streams).
docs/STORE.md is the contract.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from edged.events import NewEvent, StoredEvent
from edged.metrics import Metrics
from edged.settings import HistorySettings, OutboxSettings
from edged.store.attempts import Attempts
from edged.store.counters import Counters
from edged.store.db import Database
from edged.store.events import Admit, EventRows
from edged.store.history import HistoryReader
from edged.store.live import Live
from edged.store.outbox import OutboxEntry, OutboxRows, OutboxState
from edged.store.space import Space

__all__ = ["Store"]


class Store:
    """The SQLite store; see docs/STORE.md. Use ``async with`` (or open_sync/close_sync without a loop).

    ``admit`` is the sync side's decision of how each committed event goes to the cloud
    (edged.sync.cloudevents.CloudEvents.admit); the store keeps that decision, not the CloudEvent.
    """

    def __init__(self, path: Path, outbox: OutboxSettings, admit: Admit, metrics: Metrics | None = None, *,
                 clock: Callable[[], float] = time.time, history: HistorySettings | None = None) -> None:
        self.path = path
        self._db = Database(path, Counters(outbox, metrics))
        queued = asyncio.Event()
        history = history if history is not None else HistorySettings()
        space = Space(self._db, clock, history)
        #: Reads of the event history (GET /v1/events), beside the writer.
        self.history = HistoryReader(path)
        #: Committed events, as they are committed (GET /v1/events/stream).
        self.live = Live(history.max_streams)
        self._attempts = Attempts(self._db, clock)
        self._events = EventRows(self._db, space, self._attempts, admit, queued, metrics, clock)
        self._outbox = OutboxRows(self._db, space, queued, clock)
        self._queued = queued

    # -- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        self._db.start()
        try:
            await self._db.run(self._open)
        except BaseException:
            self._db.stop()
            raise
        self.history.open()
        return self

    def _open(self) -> None:
        self._db.open()
        self._attempts.load(self._db.con)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.live.close()
        try:
            await self.history.close()
            if self._db.started:
                await self._db.run(self._db.close)
        finally:
            self._db.stop()

    def open_sync(self) -> None:
        """Open from plain code (CLI, benchmarks): blocks this thread until the database is open."""
        self._db.start()
        try:
            self._db.submit(self._open).result()
        except BaseException:
            self._db.stop()
            raise
        self.history.open()

    def close_sync(self) -> None:
        self.live.close()
        try:
            self.history.close_sync()
            if self._db.started:
                self._db.submit(self._db.close).result()
        finally:
            self._db.stop()

    # -- inputs and events -----------------------------------------------------------------------------

    async def commit_input(self, *, transport: str, camera: str, sha256: str, received_at: float,
                           correlation: bytes | None, events: list[NewEvent],
                           publish_mqtt: bool) -> list[StoredEvent]:
        """Store one input and its events, and queue them for the cloud, in ONE durable transaction.

        Raises OutboxFull (nothing written) when the outbox is full and on_full is reject_new.
        """
        stored = await self._events.commit_input(transport=transport, camera=camera, sha256=sha256,
                                                 received_at=received_at, correlation=correlation, events=events,
                                                 publish_mqtt=publish_mqtt)
        # On the loop, once the commit is on disk: a stream never shows what a crash could take back.
        self.live.publish(stored)
        return stored

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        """Events of the newest input with this camera and sha256 received within ``window_s``, else None."""
        return await self._events.recent_input(camera, sha256, window_s)

    async def mqtt_pending(self, limit: int) -> list[StoredEvent]:
        """Events still to publish on MQTT, oldest first."""
        return await self._events.mqtt_pending(limit)

    async def mqtt_published(self, ids: Sequence[str]) -> None:
        """Clear the "to publish on MQTT" mark of these events."""
        await self._events.mqtt_published(ids)

    async def recent_or_count(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        """``recent_input``; when it finds nothing, ``count_attempt`` of the frame in the same writer job (one
        trip to the writer per MQTT frame instead of two)."""
        found = await self._attempts.count_unless(
            camera, sha256, found=lambda db: self._events.recent_in(db, camera, sha256, window_s))
        return None if isinstance(found, int) else found

    # -- attempts of MQTT frames (poison frames) ------------------------------------------------------

    def attempts(self, camera: str, sha256: str) -> int:
        """Times this frame started processing without being committed since (kept in memory)."""
        return self._attempts.tried(camera, sha256)

    async def count_attempt(self, camera: str, sha256: str, step: int = 1) -> int:
        """Count one more attempt of this frame (``step`` -1 takes one back), on disk before it returns
        (frames counted at once share one transaction); the new count. Committing the frame deletes it."""
        return await self._attempts.count(camera, sha256, step)

    @property
    def full(self) -> bool:
        """New results would certainly be refused (on_full = reject_new and no room): /readyz is 503."""
        return self._db.counters.full

    # -- the cloud outbox ------------------------------------------------------------------------------

    async def outbox_batch(self, limit: int, now: float) -> list[OutboxEntry]:
        """Queued rows ready at ``now``, by seq, never passing an earlier row of the same camera that waits."""
        return await self._outbox.batch(limit, now)

    async def wait_queued(self) -> None:
        """Return once something may have been queued since the last outbox_batch (callers bound the wait)."""
        await self._queued.wait()

    async def outbox_ack(self, ids: Sequence[str]) -> None:
        """The sidecar accepted these events (2xx): delete them."""
        await self._outbox.ack(ids)

    async def outbox_retry(self, ids: Sequence[str], error: str, not_before: float) -> None:
        """A transient failure: count the attempt, keep the row, try again from ``not_before``."""
        await self._outbox.retry(ids, error, not_before)

    async def outbox_dead(self, ids: Sequence[str], reason: str) -> None:
        """A permanent failure: park these rows as dead letters with the reason."""
        await self._outbox.dead(ids, reason)

    async def retry_dead(self) -> int:
        """Put every dead letter back in line (in its original place); return how many."""
        return await self._outbox.retry_dead()

    async def outbox_state(self) -> OutboxState:
        """Depth, bytes, oldest age, dead letters and evictions (GET /v1/outbox shows them)."""
        return await self._outbox.state()
