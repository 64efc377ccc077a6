"""One path for every ingested image: dedupe -> decode once -> functions -> one durable commit.

HTTP and MQTT both go through ``Pipeline.process``. What differs per transport is fixed once, in its
``IngestPolicy`` (limits, dedupe, what becomes an event); what differs afterwards is what it does with the
outcome (answer the client, or publish and ack).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edged.errors import BodyTooLarge, DecodeCancelled, EdgedError, FunctionError, ImageError, Overloaded
from edged.events import NewEvent, StoredEvent, rfc3339
from edged.frames import Frame
from edged.metrics import Metrics
from edged.settings import HttpSettings, MqttSettings, Settings
from edged.wasm.pool import CallResult, FunctionPool

__all__ = ["EventStore", "Guard", "IngestPolicy", "Outcome", "Pipeline"]

log = logging.getLogger(__name__)

class Guard(Protocol):
    """Held while a frame is decoded and its functions run (edged.ingest.poison's FrameAttempt: it counts MQTT
    attempts); it also makes the frame's dedupe look-up, so it can count in the same trip to the store."""

    def __call__(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def recent_input(self, window_s: float) -> list[StoredEvent] | None: ...


class EventStore(Protocol):
    """The part of the store the pipeline needs (edged.store.Store implements it)."""

    async def commit_input(self, *, transport: str, camera: str, sha256: str, received_at: float,
                           correlation: bytes | None, events: list[NewEvent],
                           publish_mqtt: bool) -> list[StoredEvent]: ...

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None: ...


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """How one transport treats every frame it ingests; built once from that transport's settings."""

    transport: Literal["http", "mqtt"]
    max_pixels: int
    #: A bigger payload becomes a ``too_large`` ingest error.
    max_bytes: int
    #: Seconds within which the same bytes from the same camera are answered from the store; 0 = never.
    dedupe_window: float
    #: Whether a payload that is not an acceptable image is committed as an error event.
    record_errors: bool
    #: Whether committed events are marked for the MQTT result publisher.
    publish_mqtt: bool

    @classmethod
    def for_http(cls, http: HttpSettings) -> IngestPolicy:
        # The client gets every error in its answer and retries on purpose: nothing to record, publish
        # or answer twice. (aiohttp already refuses bodies over max_body_bytes before they are read.)
        return cls(transport="http", max_pixels=http.max_pixels, max_bytes=http.max_body_bytes,
                   dedupe_window=0.0, record_errors=False, publish_mqtt=False)

    @classmethod
    def for_mqtt(cls, mqtt: MqttSettings) -> IngestPolicy:
        # Nobody waits for an answer: a bad frame is an error result, and a redelivery is answered from
        # the store.
        return cls(transport="mqtt", max_pixels=mqtt.max_pixels, max_bytes=mqtt.max_payload_bytes,
                   dedupe_window=mqtt.dedupe_window, record_errors=True, publish_mqtt=True)


@dataclass(slots=True)
class Outcome:
    """What happened to one ingested image."""

    events: list[StoredEvent] = field(default_factory=list)
    results: dict[str, CallResult | FunctionError] = field(default_factory=dict)
    frame: Frame | None = None
    ingest_error: ImageError | None = None
    duplicate: bool = False


def _correlation_text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def _source(transport: str, camera: str, sha256: str, correlation: bytes | None, received: float) -> dict[str, Any]:
    return {"transport": transport, "camera": camera, "sha256": sha256,
            "correlation": _correlation_text(correlation), "received_at": rfc3339(received)}


class Pipeline:
    def __init__(self, settings: Settings, pool: FunctionPool, store: EventStore | None,
                 metrics: Metrics) -> None:
        self._settings = settings
        self._pool = pool
        self._store = store
        self._metrics = metrics
        # An image body is written (and fsynced) only when something will read it back.
        self._keep_images = bool(settings.image_readers)

    async def process(self, *, policy: IngestPolicy, camera: str, data: bytes, functions: Sequence[str],
                      correlation: bytes | None = None, received_at: float | None = None,
                      sha256: str | None = None, guard: Guard | None = None) -> Outcome:
        """Run ``data`` through ``functions`` and commit the events in one transaction.

        Raises Overloaded (nothing committed: the caller must not ack), OutboxFull and DecodeCancelled
        (likewise). Bad payloads (including over ``policy.max_bytes``) and failed calls are not raised:
        they are in the outcome as error events. ``sha256`` is the payload's hex digest when the caller
        has it already. ``guard()`` is entered after the dedupe look-up and held while the frame is
        decoded and its functions run (MQTT counts attempts there); it may raise an ImageError. Without
        ``sha256`` the worker that decodes the payload hashes it, off the event loop.
        """
        transport = policy.transport
        received = time.time() if received_at is None else received_at
        if policy.dedupe_window > 0 and self._store is not None:
            sha256 = sha256 or hashlib.sha256(data).hexdigest()
            earlier = await (guard.recent_input(policy.dedupe_window) if guard is not None
                             else self._store.recent_input(camera, sha256, policy.dedupe_window))
            if earlier is not None:
                log.info("frame %s from %s already processed: answering from the store", sha256[:12], camera,
                         extra={"CAMERA": camera})
                return Outcome(events=earlier, duplicate=True)
        outcome = Outcome()
        started = time.perf_counter()
        async with contextlib.AsyncExitStack() as held:
            try:
                if len(data) > policy.max_bytes:
                    raise BodyTooLarge(f"payload of {len(data)} bytes is over the limit of {policy.max_bytes}")
                if guard is not None:
                    await held.enter_async_context(guard())
                # One function: decode and call in one worker hand-off; more: one decode, calls side by side.
                # Digests only for the store's events: hashed on the worker, not on this loop.
                outcome.frame, settled = await self._pool.decode_and_call_each(
                    data, policy.max_pixels, functions, digests=self._store is not None, sha256=sha256)
            except DecodeCancelled as exc:
                # The image may be fine: edged is stopping. Not an answer about the frame (MQTT must not ack).
                raise Overloaded(exc.detail) from exc
            except ImageError as exc:
                await held.aclose()
                self._metrics.rejected.labels(transport, exc.code).inc()
                log.warning("rejected %s payload from %s: %s (%s)", transport, camera, exc.code, exc.detail,
                            extra={"CAMERA": camera, "ERROR_CODE": exc.code})
                outcome.ingest_error = exc
                if policy.record_errors:
                    sha256 = sha256 or hashlib.sha256(data).hexdigest()
                    source = _source(transport, camera, sha256, correlation, received)
                    event = self._event("", camera, source, started, error=exc)
                    outcome.events = await self._commit(policy, camera, sha256, received, correlation, [event])
                return outcome
        outcome.results = dict(zip(functions, settled, strict=True))
        if self._store is None:  # nothing keeps events (tools, benchmarks): none to build
            return outcome
        sha256 = outcome.frame.sha256 or sha256 or hashlib.sha256(data).hexdigest()
        source = _source(transport, camera, sha256, correlation, received)
        events: list[NewEvent] = []
        for name, result in outcome.results.items():
            if isinstance(result, CallResult):
                events.append(self._event(name, camera, source, started, result=result))
            else:
                events.append(self._event(name, camera, source, started, error=result))
        outcome.events = await self._commit(policy, camera, sha256, received, correlation, events)
        return outcome

    async def _commit(self, policy: IngestPolicy, camera: str, sha256: str, received: float,
                      correlation: bytes | None, events: list[NewEvent]) -> list[StoredEvent]:
        if self._store is None:
            return []
        return await self._store.commit_input(transport=policy.transport, camera=camera, sha256=sha256,
                                              received_at=received, correlation=correlation, events=events,
                                              publish_mqtt=policy.publish_mqtt)

    def _event(self, function: str, camera: str, source: dict[str, Any], started: float, *,
               result: CallResult | None = None, error: EdgedError | None = None) -> NewEvent:
        data: dict[str, Any] = {
            "device_id": self._settings.device_id, "camera": camera, "function": function,
            "kind": "error" if error is not None else "result", "source": source,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "result": None, "image": None, "error": None,
        }
        if error is not None:
            data["error"] = {"code": error.code, "detail": error.detail}
            return NewEvent(function, "error", data)
        assert result is not None
        if result.json is not None:
            data["result"] = result.json
            return NewEvent(function, "result", data)
        data["image"] = {"content_type": result.content_type, "bytes": len(result.body),
                         "sha256": result.sha256 or hashlib.sha256(result.body).hexdigest()}
        if not self._keep_images:
            return NewEvent(function, "result", data)
        if len(result.body) > self._settings.outbox.max_image_bytes:
            # The result stands (the HTTP client still gets it); the store keeps only what it was.
            data["image"]["dropped"] = "over outbox.max_image_bytes"
            return NewEvent(function, "result", data)
        return NewEvent(function, "result", data, body=result.body, content_type=result.content_type)
