"""Cloud sync through the Dapr sidecar: drains the outbox into a pub/sub topic, in order per camera.

A row leaves the outbox only after a 2xx. Connection errors, timeouts and 5xx: jittered exponential
backoff, capped. 400/404 and other permanent 4xx: dead letter with the reason. 401/403: the token is
wrong; syncing stops, the ``dapr`` component shows the error (/readyz, the log), attempts continue
slowly and nothing is dropped. Every publish carries ``metadata.partitionKey`` = the camera, so
partitioned brokers (Kafka, Event Hubs) keep each camera's events in one partition, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import quote

import aiohttp

from edged.metrics import Metrics
from edged.retry import Backoff
from edged.secrets import SecretError, resolve_secret
from edged.settings import DaprSettings, SyncSettings
from edged.status import Components, State
from edged.store import OutboxEntry
from edged.sync.cloudevents import CloudEvents, Outgoing
from edged.sync.status import SyncStatus

__all__ = ["COMPONENT", "DaprSync", "Outbox"]

log = logging.getLogger(__name__)

COMPONENT = "dapr"
CLOUDEVENT_TYPE = "application/cloudevents+json"
#: How long the loop waits for new rows before looking again (rows in backoff become ready meanwhile).
IDLE_WAIT = 1.0
#: Room kept per bulk entry for its JSON wrapping, so a request stays under the sidecar's body limit.
BULK_ENTRY_OVERHEAD = 128
#: Longest error text kept from a sidecar answer.
DETAIL_CHARS = 300

Verdict = Literal["ok", "auth", "retry", "dead"]


class Outbox(Protocol):
    """The part of edged.store.Store the sync loop uses."""

    async def outbox_batch(self, limit: int, now: float) -> list[OutboxEntry]: ...
    async def outbox_ack(self, ids: Sequence[str]) -> None: ...
    async def outbox_retry(self, ids: Sequence[str], error: str, not_before: float) -> None: ...
    async def outbox_dead(self, ids: Sequence[str], reason: str) -> None: ...
    async def wait_queued(self) -> None: ...


def verdict(status: int) -> Verdict:
    """What a sidecar status means for the events it concerns."""
    if 200 <= status < 300:
        return "ok"
    if status in (401, 403):
        return "auth"
    if status in (408, 425, 429) or status >= 500 or status < 400:
        return "retry"
    return "dead"


def describe(status: int, body: bytes) -> str:
    """``HTTP 400 from sidecar: ERR_CODE: message``, from Dapr's JSON error shape when there is one."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and ("errorCode" in parsed or "message" in parsed):
        text = ": ".join(str(parsed[k]) for k in ("errorCode", "message") if parsed.get(k))
    if status == 401:
        text = f"token rejected ({text})" if text else "token rejected"
    return f"HTTP {status} from sidecar" + (f": {text[:DETAIL_CHARS]}" if text else "")


@dataclass(slots=True)
class _Round:
    """What happened to one batch."""

    acked: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)
    auth: str | None = None
    down: str | None = None
    failing: str | None = None

    @property
    def stopped(self) -> bool:
        return self.auth is not None or self.down is not None


class DaprSync:
    """The drain loop; ``run()`` is the ``edged.sync.drain`` task."""

    def __init__(self, dapr: DaprSettings, sync: SyncSettings, outbox: Outbox, components: Components,
                 metrics: Metrics | None = None, *, cloudevents: CloudEvents) -> None:
        self._dapr = dapr
        self._cloudevents = cloudevents
        self.status = SyncStatus()
        self._sync = sync
        self._outbox = outbox
        self._components = components
        self._metrics = metrics
        base = dapr.url.rstrip("/")
        pubsub, topic = quote(dapr.pubsub, safe=""), quote(dapr.topic, safe="")
        self._health_url = f"{base}/v1.0/healthz/outbound"
        self._publish_url = f"{base}/v1.0/publish/{pubsub}/{topic}"
        self._bulk_url = f"{base}/v1.0-alpha1/publish/bulk/{pubsub}/{topic}"
        self._backoff = Backoff(dapr.retry_min, dapr.retry_max)
        self._token: str | None = None
        self._token_stale = True
        self._set("starting", f"waiting for the sidecar at {base}")

    def _set(self, state: State, detail: str = "") -> None:
        self._components.set(COMPONENT, state, detail)

    def _note(self, ok: bool, error: str | None) -> None:
        self.status.note(ok, error, self._metrics)

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type}
        if self._token is not None:
            headers["dapr-api-token"] = self._token
        return headers

    async def run(self) -> None:
        """Drain the outbox until cancelled. A failure of the loop itself is logged, shown, and retried."""
        timeout = aiohttp.ClientTimeout(total=self._dapr.timeout, sock_connect=min(self._dapr.timeout, 5.0))
        while True:
            try:
                connector = aiohttp.TCPConnector(limit=self._dapr.concurrency + 1)
                async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                    await self._drain(session)
            except Exception as exc:  # noqa: BLE001 - the task's top level: log, show, start over
                log.exception("sync loop failed; starting over in %ss", self._dapr.retry_max)
                self._set("error", f"sync loop failed: {exc}")
                self._note(False, f"sync loop failed: {exc}")
                await asyncio.sleep(self._dapr.retry_max)

    async def _drain(self, session: aiohttp.ClientSession) -> None:
        healthy = False
        while True:
            if self._token_stale:
                try:
                    self._token = resolve_secret("dapr.token_file", self._dapr.token, self._dapr.token_file)
                    self._token_stale = False
                except SecretError as exc:
                    await self._auth_pause(str(exc))
                    continue
            if not healthy:
                problem = await self._health(session)
                if problem is not None:
                    self._set("disconnected", problem)
                    self._note(False, problem)
                    await asyncio.sleep(self._backoff.next())
                    continue
                healthy = True
                self._backoff.reset()
                self._set("connected")
            # Built from the stored event at each attempt: the same bytes on every retry.
            entries = await self._outbox.outbox_batch(self._sync.batch, time.time())
            batch = [self._cloudevents.outgoing(e) for e in entries]
            if not batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_WAIT):
                        await self._outbox.wait_queued()
                continue
            rnd = await (self._publish_bulk(session, batch) if self._dapr.bulk
                         else self._publish_single(session, batch))
            problem = rnd.auth or rnd.down or rnd.failing
            delay = self._backoff.next() if (rnd.down or rnd.failing) else 0.0
            await self._settle(rnd, delay, problem)
            if rnd.auth is not None:
                await self._auth_pause(rnd.auth)
            elif problem is not None:
                self._set("disconnected", problem)
                healthy = rnd.down is None
                await asyncio.sleep(delay)
            else:
                self._backoff.reset()
                self._set("connected")

    async def _auth_pause(self, detail: str) -> None:
        self._set("error", detail)
        self._note(False, detail)
        await asyncio.sleep(self._dapr.auth_retry)
        # The fix may be a new token file: read it again before the next attempt.
        self._token_stale = self._dapr.token_file is not None

    async def _health(self, session: aiohttp.ClientSession) -> str | None:
        try:
            async with session.get(self._health_url) as resp:
                body = await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"sidecar not ready: {describe(resp.status, body)}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"cannot reach the sidecar at {self._dapr.url}: {exc or type(exc).__name__}"

    async def _settle(self, rnd: _Round, delay: float, problem: str | None) -> None:
        if rnd.acked:
            await self._outbox.outbox_ack(rnd.acked)
            self._note(True, None)
        if rnd.dead:
            by_reason: dict[str, list[str]] = {}
            for event_id, reason in rnd.dead:
                by_reason.setdefault(reason, []).append(event_id)
            for reason, ids in by_reason.items():
                log.warning("sync: %d events dead-lettered (%s), e.g. %s; POST /v1/outbox/dead/retry resends them",
                            len(ids), reason, ids[0])
                await self._outbox.outbox_dead(ids, reason)
                self._note(False, reason)
        if rnd.retry and problem is not None:
            await self._outbox.outbox_retry(rnd.retry, problem, time.time() + delay)
        if self._metrics is not None:
            self._metrics.sync_events.labels("published").inc(len(rnd.acked))
            self._metrics.sync_events.labels("retry").inc(len(rnd.retry))
            self._metrics.sync_events.labels("dead").inc(len(rnd.dead))

    # -- single publishes -------------------------------------------------------------------------------

    async def _publish_single(self, session: aiohttp.ClientSession, batch: Sequence[Outgoing],
                              rnd: _Round | None = None) -> _Round:
        """One request per event; cameras in parallel, each camera's events one at a time in seq order."""
        rnd = rnd if rnd is not None else _Round()
        lanes: dict[str, list[Outgoing]] = {}
        for entry in batch:
            lanes.setdefault(entry.camera, []).append(entry)
        gate = asyncio.Semaphore(self._dapr.concurrency)

        async def lane(entries: list[Outgoing]) -> None:
            for entry in entries:
                async with gate:
                    if rnd.stopped:
                        return
                    outcome = await self._post_one(session, entry, rnd)
                if outcome != "ok":
                    return  # "retry": later events of this camera wait for this one; "stop": all stop

        async with asyncio.TaskGroup() as group:
            for entries in lanes.values():
                group.create_task(lane(entries), name="edged.sync.lane")
        return rnd

    async def _post_one(self, session: aiohttp.ClientSession, entry: Outgoing,
                        rnd: _Round) -> Literal["ok", "retry", "stop"]:
        try:
            async with session.post(self._publish_url, data=entry.cloudevent, headers=self._headers(CLOUDEVENT_TYPE),
                                    params={"metadata.partitionKey": entry.camera}) as resp:
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            rnd.down = rnd.down or f"publish to {self._dapr.url} failed: {exc or type(exc).__name__}"
            rnd.retry.append(entry.id)
            return "stop"
        match verdict(status):
            case "ok":
                rnd.acked.append(entry.id)
                return "ok"
            case "dead":
                rnd.dead.append((entry.id, describe(status, body)))
                return "ok"
            case "auth":
                rnd.auth = rnd.auth or describe(status, body)
                return "stop"
            case _:
                rnd.failing = rnd.failing or describe(status, body)
                rnd.retry.append(entry.id)
                return "retry"

    # -- bulk publishes ---------------------------------------------------------------------------------

    def _chunks(self, batch: Sequence[Outgoing]) -> list[list[Outgoing]]:
        """Split a batch so no bulk request body exceeds sync.max_event_bytes (the sidecar's body limit)."""
        chunks: list[list[Outgoing]] = []
        current: list[Outgoing] = []
        size = 2
        for entry in batch:
            cost = len(entry.cloudevent) + BULK_ENTRY_OVERHEAD
            if current and size + cost > self._sync.max_event_bytes:
                chunks.append(current)
                current, size = [], 2
            current.append(entry)
            size += cost
        if current:
            chunks.append(current)
        return chunks

    async def _publish_bulk(self, session: aiohttp.ClientSession, batch: Sequence[Outgoing]) -> _Round:
        rnd = _Round()
        for chunk in self._chunks(batch):
            # After any failure stop: a later chunk could hold later events of the failed camera.
            if rnd.stopped or rnd.retry:
                break
            await self._bulk_chunk(session, chunk, rnd)
        return rnd

    async def _bulk_chunk(self, session: aiohttp.ClientSession, chunk: list[Outgoing], rnd: _Round) -> None:
        # Assembled from the stored bytes: the CloudEvents are not parsed and serialized again.
        body = b"[" + b",".join(
            b'{"entryId":"' + e.id.encode() + b'","event":' + e.cloudevent + b',"contentType":"'
            + CLOUDEVENT_TYPE.encode() + b'","metadata":{"partitionKey":' + json.dumps(e.camera).encode() + b"}}"
            for e in chunk) + b"]"
        try:
            async with session.post(self._bulk_url, data=body, headers=self._headers("application/json")) as resp:
                status, answer = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            rnd.down = f"bulk publish to {self._dapr.url} failed: {exc or type(exc).__name__}"
            rnd.retry.extend(e.id for e in chunk)
            return
        match verdict(status):
            case "ok":
                rnd.acked.extend(e.id for e in chunk)
            case "auth":
                rnd.auth = describe(status, answer)
            case "dead":
                # A 4xx on the whole request (pub/sub missing, one bad entry, too large, no bulk API):
                # one by one, so only the events that are really refused become dead letters.
                log.info("sync: bulk publish refused (%s); publishing these %d events one by one",
                         describe(status, answer), len(chunk))
                await self._publish_single(session, chunk, rnd)
            case _:
                failed = self._failed_entries(answer, chunk)
                rnd.failing = describe(status, answer)
                rnd.retry.extend(e.id for e in chunk if e.id in failed)
                rnd.acked.extend(e.id for e in chunk if e.id not in failed)

    @staticmethod
    def _failed_entries(answer: bytes, chunk: list[Outgoing]) -> set[str]:
        """Entry ids the sidecar lists as failed; every entry when the answer does not say."""
        every = {e.id for e in chunk}
        try:
            parsed = json.loads(answer)
        except ValueError:
            return every
        entries = parsed.get("failedEntries") if isinstance(parsed, dict) else None
        if not isinstance(entries, list) or not entries:
            return every
        failed = {str(item.get("entryId")) for item in entries if isinstance(item, dict)}
        return failed & every or every
