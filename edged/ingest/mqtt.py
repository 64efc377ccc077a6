"""MQTT camera ingest: frames in, acknowledged only after their results are durably committed.

Path of one frame: paho delivers it (on the loop, see ``edged.mqtt``) -> an internal queue -> the
``edged.mqtt.ingest`` loop starts a ``edged.mqtt.frame`` task -> ``Pipeline.process`` (dedupe, decode
once, functions, ONE commit that also marks the events "to publish") -> manual PUBACK. The
``edged.mqtt.publish`` loop then sends the committed events (handed over in memory, and from the store
whenever the hand-over may have missed some: ``edged.sync.mqtt_results``, given to this component as its
``Results``), on a second connection (``{client_id}-results``, a clean session) so result acknowledgements
never queue behind frames.

Overload policy (memory stays bounded, nothing is dropped):
- Frames taken and not yet acked are bounded. With MQTT 5 the broker is told ``mqtt.max_inflight`` as
  the Receive Maximum; MQTT 3.1.1 has no such property (mosquitto's per-client
  ``max_inflight_messages`` plays that part). Neither is relied on: mosquitto 2.0.11 (Debian 12) sends
  more than either once PUBACKs flow (eclipse/mosquitto#2301). So, whatever the protocol, edged stops
  reading the socket once ``max_inflight`` frames are held (TCP backpressure, which also holds back
  QoS 0 frames) and reads again below it. paho's read in progress still finishes: it handles at most
  one packet per publish of ours in flight, so at most ``max_inflight + max_publish_inflight + 1``
  frames are ever held.
- Frames run concurrently up to what the function pool admits for them. When the pool is full
  (Overloaded) or the outbox refuses new events (OutboxFull), the frame is not acked and is retried
  with backoff; it keeps its slot, so no further frames are taken meanwhile.
- A payload the device can never process (not an image, too big, too many pixels for the limit or
  the memory budget, too complex, or too slow to decode within the call's timeout: the cost is in the
  bytes, so a retry would fail the same way) gets an error event, published on
  ``{prefix}/errors/{camera}``, and is acked. A refusal that may pass later (Overloaded, the outbox
  full, a decode stopped by shutdown) is not acked.
- A frame that crashed edged ``mqtt.max_attempts`` times is quarantined (edged.ingest.poison): an
  error event with code ``quarantined``, acked.
- A frame redelivered after a crash (same camera, same bytes, within ``mqtt.dedupe_window``) is
  answered from the store: its stored events are published again with their original ids.
- A subscription with ``max_fps`` runs its cameras' frames through ``edged.ingest.sampling``: a frame
  over the rate waits, and a newer frame replaces it; the replaced one is acked unprocessed and counted
  in ``edged_frames_skipped{reason="sampled"}``. That is the one deliberate exception to at-least-once.
QoS 0 frames are processed the same way but are lost if edged dies before committing them (that is
what QoS 0 means); QoS 2 subscriptions are made at QoS 1, see ``Subscription.qos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edged.errors import DecodeCancelled, EdgedError, OutboxFull, Overloaded, Quarantined
from edged.events import StoredEvent
from edged.ingest.poison import AttemptStore, PoisonGuard
from edged.ingest.routes import Route, camera_of, rates, route_for, routes
from edged.ingest.sampling import Key, Sampler
from edged.metrics import Metrics
from edged.mqtt import COMPONENT, ConnectionHandler, Received
from edged.pipeline import IngestPolicy, Outcome, Pipeline
from edged.retry import backoff_delay
from edged.settings import Settings, Subscription
from edged.status import Components

if TYPE_CHECKING:  # paho comes with the connection, made only with [mqtt] enabled
    from edged.mqtt import MqttConnection

__all__ = ["MqttIngest", "Results"]

log = logging.getLogger(__name__)

#: Retry delays (seconds) of a frame the pool or the outbox could not take yet.
RETRY_MIN, RETRY_MAX = 0.05, 5.0


class Results(Protocol):
    """Where committed results leave for the broker (edged.sync.mqtt_results.ResultPublisher)."""

    def wake(self) -> None:
        """Events to publish may be in the store."""

    def committed(self, events: Sequence[StoredEvent]) -> None:
        """These events to publish were just committed."""

    def echo(self, events: Sequence[StoredEvent]) -> None:
        """Publish these stored events again (a duplicate frame was answered from the store)."""


@dataclass(frozen=True, slots=True)
class _Frame:
    msg: Received
    route: Route
    camera: str
    correlation: bytes | None
    sampled: bool = False

    @property
    def key(self) -> Key:
        return self.route.filter, self.camera


class MqttIngest(ConnectionHandler):
    """The MQTT ingest component: ``async with`` builds the client; ``background()`` gives its loops.
    ``results`` (None only when MQTT is disabled) publishes what the frames produced."""

    def __init__(self, settings: Settings, pipeline: Pipeline, results: Results | None, metrics: Metrics,
                 components: Components, attempts: AttemptStore | None = None) -> None:
        self._settings = settings
        self._mqtt = settings.mqtt
        self._pipeline = pipeline
        if settings.mqtt.enabled and results is None:
            raise ValueError("MQTT ingest needs a result publisher when mqtt.enabled")
        self._results = results
        self._policy = IngestPolicy.for_mqtt(settings.mqtt)
        # Without a store (tests of the ingest alone) nothing is counted.
        self._poison = PoisonGuard(attempts, settings.mqtt.max_attempts) if attempts is not None else None
        self._metrics = metrics
        self._components = components
        self._routes = routes(settings.mqtt.subscriptions)
        self._sampler = Sampler[_Frame](rates(self._routes), self._enqueue, self._skip)
        self._conn: MqttConnection | None = None
        self._queue: deque[_Frame] = deque()
        self._queued = asyncio.Event()
        self._inflight = 0
        self._inflight_peak = 0
        self._session_resumed = False
        self._busy: dict[tuple[str, str], asyncio.Event] = {}
        # Frames processed at once: as many as the pool admits calls for (decode + each function).
        per_frame = 1 + max((len(r.functions) for r in self._routes), default=1)
        admitted = settings.pool.workers + settings.pool.queue
        self._slots = asyncio.Semaphore(max(1, min(self._mqtt.max_inflight, admitted // per_frame)))

    @property
    def inflight(self) -> int:
        """Frames taken and not yet acknowledged (queued or being processed)."""
        return self._inflight

    @property
    def inflight_peak(self) -> int:
        """The most frames ever held at once: ``max_inflight`` plus what one socket read may add."""
        return self._inflight_peak

    async def __aenter__(self) -> MqttIngest:
        if not self._mqtt.enabled:
            self._components.set(COMPONENT, "disabled", "mqtt.enabled = false")
            return self
        self._components.set(COMPONENT, "starting", f"{self._mqtt.host}:{self._mqtt.port}")
        if any(sub.qos == 2 for sub in self._mqtt.subscriptions):
            log.warning("QoS 2 subscriptions are made at QoS 1 (at-least-once; duplicates answered from the store)")
        if self._mqtt.publish_images and self._mqtt.protocol != "5":
            log.warning("mqtt.publish_images needs MQTT 5 (user properties): publishing JSON events instead")
        from edged.mqtt import MqttConnection  # paho: only with [mqtt] enabled

        self._conn = MqttConnection(self._mqtt, self._settings.mqtt_client_id, self, self._components)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._sampler.close()
        if self._conn is not None:
            await self._conn.close()

    def background(self) -> dict[str, Coroutine[Any, Any, None]]:
        if self._conn is None:
            return {}
        return {
            "edged.mqtt.connection": self._conn.run(),
            "edged.mqtt.ingest": self._ingest(),
        }

    def resubscribe(self, subscriptions: Sequence[Subscription]) -> None:
        """Route new messages by ``subscriptions`` from now on, and change the live connection's filters."""
        before = {(r.filter, r.qos) for r in self._routes}
        self._routes = routes(subscriptions)
        self._sampler.reconfigure(rates(self._routes))
        after = {(r.filter, r.qos) for r in self._routes}
        if self._conn is None:
            return
        kept = {topic for topic, _qos in after}
        self._conn.unsubscribe(sorted({topic for topic, _qos in before - after} - kept))
        self._conn.subscribe(sorted(after - before))
        log.info("MQTT subscriptions now: %s", ", ".join(sorted(kept)) or "none")

    # -- ConnectionHandler (loop thread, inside paho's callbacks) -------------------------------------

    def on_connected(self, generation: int, session_present: bool) -> None:
        assert self._conn is not None
        self._session_resumed = session_present
        if session_present:
            self._forget_redelivered()
        # Also on a resumed session: the configuration may have gained a subscription since. (3.1.1 then
        # replays retained frames; within dedupe_window they are answered from the store.)
        self._conn.subscribe([(r.filter, r.qos) for r in self._routes])

    def on_disconnected(self) -> None:
        pass  # frames held keep their generation; see _stale

    def on_published(self, mid: int, ok: bool, reason: str) -> None:
        pass  # only the status message is published on this connection

    def on_message(self, message: Received) -> None:
        assert self._conn is not None
        route = route_for(self._routes, message.topic)
        if route is None:
            # A subscription left in the broker's session by an older configuration.
            self._metrics.mqtt_frames.labels("unrouted").inc()
            log.warning("no subscription matches %r: acknowledged without processing", message.topic)
            self._conn.ack(message.mid, message.qos, message.generation)
            return
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        frame = _Frame(message, route, camera_of(route, message.topic, props),
                       bytes(correlation) if correlation is not None else None, self._sampler.limits(route.filter))
        self._taken(+1)
        if frame.sampled:
            self._sampler.offer(frame.key, frame)
        else:
            self._enqueue(frame)

    def _enqueue(self, frame: _Frame) -> None:
        self._queue.append(frame)
        self._queued.set()

    def _skip(self, frame: _Frame) -> None:
        """A newer frame of the camera replaced this one (max_fps): acked without being processed."""
        assert self._conn is not None
        self._metrics.frames_skipped.labels(frame.camera, "sampled").inc()
        msg = frame.msg
        self._conn.ack(msg.mid, msg.qos, msg.generation)  # on an older connection: sent again, skipped again
        self._taken(-1)

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _taken(self, delta: int) -> None:
        assert self._conn is not None
        self._inflight += delta
        self._inflight_peak = max(self._inflight_peak, self._inflight)
        self._metrics.mqtt_inflight.set(self._inflight)
        if self._inflight >= self._mqtt.max_inflight:
            self._conn.io.pause_reading()
        elif self._conn.io.reading_paused:
            self._conn.io.resume_reading()

    def _stale(self, frame: _Frame) -> bool:
        """True when the broker will deliver this frame again: it came on an older connection of a
        session that was resumed (unacked QoS 1 messages are resent with it)."""
        assert self._conn is not None
        return frame.msg.qos > 0 and self._session_resumed and frame.msg.generation != self._conn.generation

    def _forget_redelivered(self) -> None:
        waiting = self._sampler.forget(self._stale)
        gone = [f for f in self._queue if self._stale(f)]
        dropped = len(gone) + len(waiting)
        if dropped:
            self._queue = deque(f for f in self._queue if not self._stale(f))
            log.info("%d queued frames will be redelivered by the broker: taking those instead", dropped)
            self._taken(-dropped)
        for frame in gone:
            if frame.sampled:
                self._sampler.done(frame.key)

    # -- the ingest loop -------------------------------------------------------------------------------

    async def _ingest(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            while True:
                await self._slots.acquire()
                while not self._queue:
                    self._queued.clear()
                    await self._queued.wait()
                frame = self._queue.popleft()
                tasks.create_task(self._handle(frame), name="edged.mqtt.frame")

    async def _handle(self, frame: _Frame) -> None:
        try:
            outcome = await self._process(frame)
            if outcome is not None:
                self._finish(frame, outcome)
        except Exception:
            # Not acked: the broker redelivers the frame on the next connection.
            log.exception("frame from %s on %s failed; not acknowledged", frame.camera, frame.msg.topic,
                          extra={"CAMERA": frame.camera})
        finally:
            self._slots.release()
            self._taken(-1)
            if frame.sampled:
                self._sampler.done(frame.key)

    async def _process(self, frame: _Frame) -> Outcome | None:
        data = frame.msg.payload
        sha256 = hashlib.sha256(data).hexdigest()
        guard = self._poison.frame(frame.camera, sha256, frame.msg.qos) if self._poison is not None else None
        async with self._one_at_a_time(frame.camera, sha256), guard or contextlib.nullcontext():
            attempt = 0
            while True:
                try:
                    outcome = await self._pipeline.process(
                        policy=self._policy, camera=frame.camera, data=data, functions=frame.route.functions,
                        correlation=frame.correlation, received_at=frame.msg.received_at, sha256=sha256,
                        guard=guard)
                    if guard is not None:
                        guard.committed()
                    return outcome
                except Overloaded:
                    self._metrics.overloaded.labels("mqtt").inc()
                    delay = backoff_delay(attempt, RETRY_MIN, RETRY_MAX)
                except DecodeCancelled as exc:  # shutting down: this task is cancelled soon, unacked
                    self._metrics.mqtt_retries.labels(exc.code).inc()
                    delay = backoff_delay(attempt, RETRY_MIN, RETRY_MAX)
                except OutboxFull as exc:
                    self._metrics.mqtt_retries.labels(exc.code).inc()
                    delay = backoff_delay(attempt, RETRY_MIN * 20, exc.retry_after)
                    log.warning("outbox full: frame from %s waits unacknowledged (retry in %.1fs)", frame.camera,
                                delay, extra={"CAMERA": frame.camera, "ERROR_CODE": exc.code})
                except EdgedError as exc:  # the store failed (disk full, I/O error): nothing was committed
                    self._metrics.mqtt_retries.labels(exc.code).inc()
                    delay = backoff_delay(attempt, RETRY_MIN * 20, RETRY_MAX * 6)
                    log.error("frame from %s not committed (%s: %s); retrying in %.1fs", frame.camera, exc.code,
                              exc.detail, delay, extra={"CAMERA": frame.camera, "ERROR_CODE": exc.code})
                attempt += 1
                await asyncio.sleep(delay)
                if self._stale(frame):
                    return None

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, camera: str, sha256: str) -> AsyncIterator[None]:
        """Copies of one frame (a redelivery racing the original) run one after the other, so the
        second is answered from the store with the first one's events."""
        key = (camera, sha256)
        while (busy := self._busy.get(key)) is not None:
            await busy.wait()
        done = self._busy[key] = asyncio.Event()
        try:
            yield
        finally:
            del self._busy[key]
            done.set()

    def _finish(self, frame: _Frame, outcome: Outcome) -> None:
        assert self._conn is not None
        assert self._results is not None
        if outcome.duplicate:
            self._metrics.mqtt_frames.labels("duplicate").inc()
            self._results.echo(outcome.events)
        else:
            error = outcome.ingest_error
            label = "quarantined" if isinstance(error, Quarantined) else "rejected" if error else "processed"
            self._metrics.mqtt_frames.labels(label).inc()
            self._results.committed(outcome.events)
        msg = frame.msg
        if not self._conn.ack(msg.mid, msg.qos, msg.generation):
            # A resumed session redelivers it, and the copy is answered from the store.
            log.debug("frame from %s committed after its connection closed: not acknowledged", frame.camera)
