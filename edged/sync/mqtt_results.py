"""Results from the store to the broker (sync work, beside the Dapr drain): QoS 1, on a connection of
their own, marked published on PUBACK.

The store is the queue: ``Store.mqtt_pending`` lists committed events still to publish, oldest first, and
``Store.mqtt_published`` clears the mark once the broker acknowledged them (in the group commit of the
frames committed beside it). Nothing waits in memory for a broker: while it is away the events just stay
pending, and after a reconnect the loop starts over from the store (paho's unacknowledged publishes are
dropped on disconnect, so nothing goes out twice from two places).

While the loop keeps up, the events the ingest side just committed are handed over as they are
(``committed``) and sent without reading them back from the store: a read, a JSON decode and a writer
thread trip less per frame. The store is read again whenever that hand-over may have missed something:
at start and after every reconnect, when more were handed over than ``MAX_FRESH``, after a refusal, on
``wake()`` and at least every ``POLL_SECONDS``. A store read that returns every pending event covers all
events up to its highest seq, so a handed-over event at or below that seq is not sent a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from edged.events import StoredEvent
from edged.metrics import Metrics
from edged.mqtt import ConnectionHandler, MqttConnection, Received
from edged.retry import Backoff
from edged.settings import MqttSettings
from edged.status import Components
from edged.sync.homeassistant import Discovery
from edged.sync.mqtt_render import render

__all__ = ["PublishStore", "ResultPublisher"]

log = logging.getLogger(__name__)

#: Rows read per look at the store beyond those already in flight.
BATCH = 64
#: The store is looked at this often even when nothing announced new results (a safety net).
POLL_SECONDS = 5.0
#: Duplicates answered from the store wait at most this many at once for a free publish slot.
MAX_ECHOES = 1024
#: Committed events handed over in memory, at most; past it they are read back from the store.
MAX_FRESH = 1024


class PublishStore(Protocol):
    async def mqtt_pending(self, limit: int) -> list[StoredEvent]: ...

    async def mqtt_published(self, ids: Sequence[str]) -> None: ...


class ResultPublisher(ConnectionHandler):
    """The ``edged.mqtt.publish`` loop: drains ``mqtt_pending`` whenever connected, bounded in flight.

    It owns the results connection (client id ``{client_id}-results``). ``async with`` closes it at the
    end; ``background()`` gives the two loops (the connection's and the publishing one). With a
    ``discovery``, each result published is also reported to it, and its retained Home Assistant
    configs and states go out on this connection, within the same in-flight limit.
    """

    def __init__(self, settings: MqttSettings, client_id: str, store: PublishStore, metrics: Metrics,
                 components: Components, discovery: Discovery | None = None) -> None:
        self._settings = settings
        self.conn = MqttConnection(settings, f"{client_id}-results", self, components, ingest=False)
        self._store = store
        self._metrics = metrics
        self._wake = asyncio.Event()
        #: mid -> event id (None for an echo of a duplicate, which is not tracked in the store).
        self._by_mid: dict[int, str | None] = {}
        #: Event ids published or acknowledged but not yet marked in the store: never picked twice.
        self._claimed: set[str] = set()
        self._acked: list[str] = []
        self._echoes: deque[StoredEvent] = deque()
        #: Events handed over by ``committed``, in commit order, not sent yet.
        self._fresh: deque[StoredEvent] = deque()
        #: True while the store must be read: something pending may be neither in flight nor in _fresh.
        self._behind = True
        #: Every pending event with a seq up to this one came with a store read (sent from there).
        self._covered = 0
        #: The highest seq handed over so far, and when the store was last read (the safety net).
        self._handed = 0
        self._read_at = 0.0
        self._flushing: asyncio.Task[None] | None = None
        self._discovery = discovery
        #: mids of Home Assistant messages in flight (not results: nothing to mark in the store).
        self._announcing: set[int] = set()
        #: Slows publishing down while the broker refuses results (an ACL problem is not fixed in a hot loop).
        self._refused = Backoff(1.0, 60.0)
        self._hold_until = 0.0

    # -- called by the ingest side and, as its ConnectionHandler, by the results connection (loop thread) --

    def wake(self) -> None:
        """Something may be pending in the store: read it there."""
        self._behind = True
        self._wake.set()

    def committed(self, events: Sequence[StoredEvent]) -> None:
        """These events were just committed with their "to publish" mark: send them as they are.

        Only their JSON is held (an image body is published only with ``publish_images``, and then
        read from the store), so at most ``MAX_FRESH`` small events wait here."""
        if self._settings.publish_images or len(self._fresh) + len(events) > MAX_FRESH:
            self._behind = True  # they are in the store
        else:
            for event in events:
                self._fresh.append(dataclasses.replace(event, body=None) if event.body is not None else event)
                self._handed = max(self._handed, event.seq)
        self._wake.set()

    def echo(self, events: Sequence[StoredEvent]) -> None:
        """Publish these stored events again (a duplicate frame answered from the store), best effort:
        the originals are published from the store anyway."""
        for event in events:
            if len(self._echoes) >= MAX_ECHOES:
                log.warning("skipping the repeat of event %s: %d repeats already waiting", event.id, MAX_ECHOES,
                            extra={"EVENT_ID": event.id})
                continue
            self._echoes.append(event)
        self._wake.set()

    def on_published(self, mid: int, ok: bool, reason: str) -> None:
        if mid in self._announcing:
            self._announcing.discard(mid)
            if not ok:
                # Best effort: published again after the next reconnect or Home Assistant birth message.
                log.warning("the broker refused a Home Assistant discovery message (%s)", reason)
            self._wake.set()
            return
        if mid not in self._by_mid:
            return
        event_id = self._by_mid.pop(mid)
        if ok:
            self._metrics.mqtt_published.labels("ok").inc()
            self._refused.reset()
            if event_id is not None:
                self._acked.append(event_id)
        else:
            # The broker took the message but refused it (v5 reason code, e.g. not authorized): keep it
            # pending and hold back, so a broker-side ACL problem is retried slowly, not in a hot loop.
            self._metrics.mqtt_published.labels("refused").inc()
            if event_id is not None:
                self._claimed.discard(event_id)
                self._behind = True  # still pending in the store: picked from there again
            delay = self._refused.next()
            self._hold_until = time.monotonic() + delay
            log.error("the broker refused result %s (%s); it stays queued, retrying in %.0fs", event_id, reason,
                      delay, extra={"EVENT_ID": event_id})
        self._wake.set()

    def on_connected(self, generation: int, session_present: bool) -> None:
        if self._discovery is not None:
            # QoS 0: nothing to acknowledge. A retained birth message just announces everything once more.
            self.conn.subscribe([(self._discovery.birth_topic, 0)])
            self._discovery.republish()
        self._behind = True
        self._wake.set()

    def on_message(self, message: Received) -> None:
        # Only Home Assistant's status is subscribed to on this connection.
        if self._discovery is not None and self._discovery.birth(message.topic, message.payload):
            self._wake.set()

    def on_disconnected(self) -> None:
        """paho dropped its unacknowledged publishes: those events are picked again after reconnecting."""
        for event_id in self._by_mid.values():
            if event_id is not None:
                self._claimed.discard(event_id)
        self._by_mid.clear()
        self._announcing.clear()  # all of it is announced again on the next connection
        self._behind = True

    async def __aenter__(self) -> ResultPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def background(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"edged.mqtt.results-connection": self.conn.run(), "edged.mqtt.publish": self.run()}

    # -- the loop ------------------------------------------------------------------------------------------

    def _free(self) -> int:
        """Publishes the broker may still take unacknowledged (results and announcements share them)."""
        limit = min(self._settings.max_publish_inflight, self.conn.server_receive_maximum)
        return limit - len(self._by_mid) - len(self._announcing)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            self._start_flush()
            if time.monotonic() - self._read_at >= POLL_SECONDS:
                self._behind = True  # the safety net: whatever was committed without being handed over
            wait = POLL_SECONDS
            if self.conn.connected:
                hold = self._hold_until - time.monotonic()
                if hold > 0:
                    wait = min(wait, hold)
                else:
                    self._announce()  # first: configs and coalesced states are few, results may be many
                    await self._fill()
                    self._announce()  # what these results made due, if slots are left
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Disconnect, then mark what the broker acknowledged, so it is not published again after a restart."""
        await self.conn.close()
        if self._flushing is not None:
            await asyncio.wait([self._flushing])
        await self._flush()

    def _start_flush(self) -> None:
        """Mark what the broker acknowledged, beside the publishing (one flush at a time)."""
        if self._acked and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.create_task(self._flush(), name="edged.mqtt.published")

    async def _flush(self) -> None:
        if not self._acked:
            return
        ids, self._acked = self._acked, []
        try:
            await self._store.mqtt_published(ids)
        except Exception:
            # Picked again and published twice: at-least-once either way.
            log.exception("could not mark %d published results; they are published again", len(ids))
            self._behind = True
        finally:
            self._claimed.difference_update(ids)
            self._wake.set()  # acks may have come meanwhile

    async def _fill(self) -> None:
        free = self._free()
        while free > 0 and self._echoes:
            if not self._send(self._echoes[0], None):
                return
            self._echoes.popleft()
            free -= 1
        if free <= 0:
            return
        if self._behind:
            free = await self._fill_from_store(free)
        if self._behind:
            return
        while free > 0 and self._fresh:
            event = self._fresh[0]
            if event.seq > self._covered and event.id not in self._claimed:
                if not self._send(event, event.id):
                    return
                self._claimed.add(event.id)
                free -= 1
            self._fresh.popleft()

    async def _fill_from_store(self, free: int) -> int:
        """Send pending events read from the store; once a read saw every one, go back to the hand-over."""
        if self._flushing is not None and not self._flushing.done():
            # Its rows may still be pending in this read, yet no longer claimed once it ends.
            await asyncio.wait([self._flushing])
        generation = self.conn.generation
        limit = len(self._claimed) + BATCH
        handed = self._handed  # committed before the read below: in its rows if still pending
        self._behind = False  # a hand-over failing during the read sets it again
        self._read_at = time.monotonic()
        rows = await self._store.mqtt_pending(limit)
        complete = len(rows) < limit
        for event in rows:
            if free <= 0 or not self.conn.connected or self.conn.generation != generation:
                complete = False
                break
            if event.id in self._claimed:
                continue
            if not self._send(event, event.id):
                complete = False
                break
            self._claimed.add(event.id)
            free -= 1
        if complete:
            self._covered = max(self._covered, handed, rows[-1].seq if rows else 0)
        else:
            self._behind = True
            if free > 0:
                self._wake.set()  # more may be waiting beyond this batch
        return free

    def _send(self, event: StoredEvent, event_id: str | None) -> bool:
        msg = render(event, prefix=self._settings.prefix, publish_images=self._settings.publish_images,
                     v5=self.conn.v5)
        mid = self.conn.publish(msg.topic, msg.payload, qos=1, properties=msg.properties)
        if mid is None:
            return False
        self._by_mid[mid] = event_id
        if event_id is not None and self._discovery is not None:
            self._discovery.seen(event, msg.topic)
        return True

    def _announce(self) -> None:
        if self._discovery is None:
            return
        while self._free() > 0 and (message := self._discovery.take()) is not None:
            mid = self.conn.publish(message.topic, message.payload, qos=1, retain=True)
            if mid is None:
                return  # not connected: everything is announced again on the next connection
            self._announcing.add(mid)
