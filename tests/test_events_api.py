"""GET /v1/events, /v1/events/{id}, /v1/events/{id}/image and the SSE stream, against an in-process
daemon (the contract the dashboard builds on), and whether result images are stored at all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edged.app import App
from edged.ingest.events_api import add_event_routes
from edged.settings import HistorySettings, OutboxSettings, Settings, SyncSettings
from edged.store import Live, Store
from edged.sync.cloudevents import CloudEvents
from tests.configs import daemon_config
from tests.test_history import commit
from tests.test_http import daemon, encoded, post
from tests.test_store import DEVICE, result
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

#: Bound of every wait for a streamed event (the contract says within a second; this only ends a hang).
WAIT = 10.0


async def gray(session: aiohttp.ClientSession, base: str, camera: str = "cam1") -> str:
    """POST a picture to grayscale; the stored event's id."""
    status, body, headers = await post(session, f"{base}/v1/functions/grayscale", encoded("PNG"),
                                       {"X-Camera": camera})
    assert status == 200, body
    return headers["X-Edged-Event-Id"]


class Sse:
    """A Server-Sent Events reader over an open response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def message(self) -> dict[str, str]:
        """The next event's fields (comments skipped)."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(WAIT):
            while True:
                line = (await self.resp.content.readline()).decode()
                assert line, "the stream ended"
                line = line.rstrip("\n")
                if not line:
                    if fields:
                        return fields
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value

    async def event(self) -> dict[str, Any]:
        fields = await self.message()
        doc: dict[str, Any] = json.loads(fields["data"])
        assert fields["id"] == doc["id"]
        assert fields["event"] == doc["kind"]
        return doc


@asynccontextmanager
async def stream(session: aiohttp.ClientSession, url: str, **headers: str) -> AsyncIterator[Sse]:
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        yield Sse(resp)


async def test_list_get_image_and_the_one_error_shape(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (_app, session, base):
        ids = [await gray(session, base, camera) for camera in ("cam-a", "cam-b", "cam-a")]
        async with session.get(f"{base}/v1/events") as resp:
            page = await resp.json()
        assert [e["id"] for e in page["events"]] == ids[::-1]
        assert page["next"] is None
        first = page["events"][-1]
        assert first["created_at"].endswith("Z")
        assert first["image_url"] == f"/v1/events/{ids[0]}/image"
        assert first["image"]["content_type"] == "image/png"
        async with session.get(f"{base}/v1/events?camera=cam-a&limit=1") as resp:
            one = await resp.json()
        assert [e["id"] for e in one["events"]] == [ids[2]]
        async with session.get(f"{base}/v1/events", params={"camera": "cam-a", "before": one["next"]}) as resp:
            assert [e["id"] for e in (await resp.json())["events"]] == [ids[0]]
        async with session.get(f"{base}/v1/events", params={"before": ids[1]}) as resp:  # an event id as cursor
            assert [e["id"] for e in (await resp.json())["events"]] == [ids[0]]
        async with session.get(f"{base}/v1/events/{ids[1]}") as resp:
            assert resp.status == 200
            assert (await resp.json()) == page["events"][1]
        async with session.get(base + first["image_url"]) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/png"
            png = await resp.read()
        assert len(png) == first["image"]["bytes"]
        for url in ("/v1/events?kind=nope", "/v1/events?limit=0", "/v1/events?limit=501",
                    "/v1/events?before=yesterday", "/v1/events?camera="):
            async with session.get(base + url) as resp:
                assert resp.status == 400, url
                assert (await resp.json())["error"] == "bad_request"
        for url in (f"/v1/events/{'0' * 32}", f"/v1/events/{'0' * 32}/image", "/v1/events/nope"):
            async with session.get(base + url) as resp:
                assert resp.status == 404, url
                assert set(await resp.json()) == {"error", "detail"}


async def test_no_reader_no_image_body(tmp_path: Path) -> None:
    async with daemon(tmp_path, history={"images": False}) as (app, session, base):
        assert app.settings.image_readers == ()
        event_id = await gray(session, base)
        async with session.get(f"{base}/v1/events/{event_id}") as resp:
            doc = await resp.json()
        assert doc["image_url"] is None
        assert doc["image"]["bytes"] > 0  # the metadata stays
        assert len(doc["image"]["sha256"]) == 64
        async with session.get(f"{base}/v1/events/{event_id}/image") as resp:
            assert resp.status == 404
        assert (await app.store.history.image(event_id)) is None


def test_which_settings_read_images(tmp_path: Path) -> None:
    def readers(**tables: Any) -> tuple[str, ...]:
        return Settings(**daemon_config(tmp_path, history={"images": False}, **tables)).image_readers

    assert readers() == ()
    assert readers(sync={"include_images": True}) == ()  # no sidecar: nothing syncs
    assert readers(sync={"include_images": True}, dapr={"enabled": True}) == ("sync.include_images",)
    assert readers(mqtt={"enabled": True, "publish_images": True}) == ("mqtt.publish_images",)
    assert readers(mqtt={"enabled": True, "publish_images": True, "protocol": "3.1.1"}) == ()  # JSON only
    assert Settings(**daemon_config(tmp_path)).image_readers == ("history.images",)


async def test_stream_delivers_filters_and_resumes_without_gap_or_duplicate(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (_app, session, base):
        async with stream(session, f"{base}/v1/events/stream?camera=cam-b") as only_b, \
                stream(session, f"{base}/v1/events/stream") as every:
            first = await gray(session, base, "cam-a")
            second = await gray(session, base, "cam-b")
            assert (await every.event())["id"] == first
            doc = await every.event()
            assert doc["id"] == second
            assert doc["image_url"] == f"/v1/events/{second}/image"
            assert (await only_b.event())["id"] == second  # cam-a's never came
        later = [await gray(session, base) for _ in range(3)]
        # Resume after `first`: what was committed since comes first, in order, then the live ones.
        async with stream(session, f"{base}/v1/events/stream", **{"Last-Event-ID": first}) as resumed:
            backlog = [(await resumed.event())["id"] for _ in range(4)]
            assert backlog == [second, *later]
            live = await gray(session, base)
            assert (await resumed.event())["id"] == live
        async with stream(session, f"{base}/v1/events/stream?last_event_id={later[1]}&kind=result") as resumed:
            assert [(await resumed.event())["id"] for _ in range(2)] == [later[2], live]


async def test_stream_cap_answers_503(tmp_path: Path) -> None:
    async with daemon(tmp_path, history={"max_streams": 1}) as (app, session, base):
        async with stream(session, f"{base}/v1/events/stream"), \
                session.get(f"{base}/v1/events/stream") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "overloaded"
            assert "Retry-After" in resp.headers
        # A client that went away frees its slot (noticed while the stream is idle, too).
        await until(lambda: app.store.live.subscribers == 0, WAIT, "the closed stream's slot freed")
        async with stream(session, f"{base}/v1/events/stream"):
            pass


async def test_shutdown_ends_open_streams_cleanly(tmp_path: Path) -> None:
    settings = Settings(**daemon_config(tmp_path / "state", functions={}))
    async with aiohttp.ClientSession() as session:
        app = App(settings)
        async with app:
            resp = await session.get(f"http://127.0.0.1:{app.http_port}/v1/events/stream")
            assert resp.status == 200
            streams = [resp]
            assert app.store.live.subscribers == 1
        # The daemon stopped with the stream open; the stream ended as a stream ends (no cut-off chunk).
        for r in streams:
            async with asyncio.timeout(WAIT):
                assert await r.content.read() == b""
            r.release()


async def test_a_client_that_does_not_read_costs_a_bounded_queue_and_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "edged.db", OutboxSettings(), CloudEvents(DEVICE, SyncSettings()).admit,
                  history=HistorySettings())
    async with store:
        store.live = Live(max_subscribers=4, queue=4)
        app = web.Application()
        add_event_routes(app, store)
        async with TestServer(app) as server, aiohttp.ClientSession() as session, \
                stream(session, str(server.make_url("/v1/events/stream"))) as sse:
            await until(lambda: store.live.subscribers == 1, WAIT, "the stream subscribed")
            committed = []
            for batch in range(10):  # 30 events at once into a queue of 4, ten times, nothing read meanwhile
                committed += [e.id for e in await commit(store, "cam1", *(result(n=batch * 30 + i)
                                                                          for i in range(30)))]
                assert store.live.pending <= 4
            got = [(await sse.event())["id"] for _ in committed]
        assert got == committed



async def test_an_idle_stream_gets_keep_alive_comments(tmp_path: Path) -> None:
    store = Store(tmp_path / "edged.db", OutboxSettings(), CloudEvents(DEVICE, SyncSettings()).admit)
    async with store:
        app = web.Application()
        add_event_routes(app, store, keepalive=0.05)
        async with TestServer(app) as server, aiohttp.ClientSession() as session, \
                stream(session, str(server.make_url("/v1/events/stream"))) as sse:
            async with asyncio.timeout(WAIT):
                assert await sse.resp.content.readline() == b": keep-alive\n"
            (stored,) = await commit(store, "cam1", result())
            assert (await sse.event())["id"] == stored.id
