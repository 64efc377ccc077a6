"""The live view's client side in headless Chromium, against a small aiohttp server speaking the event
contract (GET /v1/events, /v1/events/stream, /v1/events/{id}/image) beside the real dashboard files.

What the real daemon cannot be made to do on cue is done here: the server ends the stream, and the page
must come back with ``Last-Event-ID`` naming the last event it got; more image results than a camera keeps
arrive, and the thumbnails' blob URLs that fell out must be revoked. tests/test_dashboard.py checks a real
frame over MQTT end to end.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from edged.ingest.web import add_dashboard
from tests.browser import chromium, page_errors, screenshot, wait_for

pytestmark = pytest.mark.timeout(120)

PER_CAMERA = 6  # edged/web/live.js keeps this many results per camera


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), 128).save(out, "PNG")
    return out.getvalue()


_PNG = _png()


def doc(n: int, camera: str, function: str = "grayscale") -> dict[str, Any]:
    """An event document as the contract gives it: a classify label, or an image with its URL."""
    event_id = f"{n:032x}"
    classify = function == "classify"
    return {"id": event_id, "device_id": "fake", "camera": camera, "function": function, "kind": "result",
            "source": {}, "latency_ms": 12.5, "error": None, "created_at": "2026-01-01T00:00:00.000Z",
            "result": {"label": f"label-{n}", "confidence": 0.9, "top": [{"label": f"label-{n}", "score": 0.9}]}
            if classify else None,
            "image": None if classify else {"content_type": "image/png", "bytes": 1, "sha256": "0" * 64},
            "image_url": None if classify else f"/v1/events/{event_id}/image"}


class ContractServer:
    """The event routes on their own loop and thread; ``push`` and ``end_streams`` are called from the test."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.events = list(history)  # oldest first
        self.resumed_from: list[str | None] = []  # Last-Event-ID of each stream request
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="contract-server", daemon=True)
        self._changed: asyncio.Condition | None = None
        self._generation = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        add_dashboard(app.router)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/v1/functions", self._functions)
        app.router.add_get("/v1/events", self._list)
        app.router.add_get("/v1/events/stream", self._stream)
        app.router.add_get("/v1/events/{id}/image", self._image)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "device_id": "fake", "components": {}})

    async def _functions(self, request: web.Request) -> web.Response:
        return web.json_response({"functions": []})

    async def _image(self, request: web.Request) -> web.Response:
        return web.Response(body=_PNG, content_type="image/png")

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query["limit"])
        return web.json_response({"events": self.events[::-1][:limit], "next": None})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        assert self._changed is not None
        last = request.headers.get("Last-Event-ID")
        self.resumed_from.append(last)
        ids = [e["id"] for e in self.events]
        sent = ids.index(last) + 1 if last in ids else 0
        generation = self._generation
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\n\n")
        while True:
            for event in self.events[sent:]:
                await resp.write(f"id: {event['id']}\nevent: result\ndata: {json.dumps(event)}\n\n".encode())
            sent = len(self.events)
            async with self._changed:
                await self._changed.wait_for(lambda seen=sent: len(self.events) > seen
                                             or self._generation != generation)
            if self._generation != generation:
                return resp

    async def _notify(self, change: Any) -> None:
        assert self._changed is not None
        async with self._changed:
            change()
            self._changed.notify_all()

    def _run(self, change: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._notify(change), self.loop).result(10)

    def push(self, *events: dict[str, Any]) -> None:
        self._run(lambda: self.events.extend(events))

    def end_streams(self) -> None:
        def bump() -> None:
            self._generation += 1
        self._run(bump)

    def __enter__(self) -> ContractServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_streams()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[ContractServer]:
    with ContractServer([doc(1, "yard", "classify"), doc(2, "door")]) as s:
        yield s


def _count(driver: Any, css: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", css))


def _streaming(driver: Any) -> bool:
    return bool(driver.execute_script("return document.getElementById('live').dataset.streaming === 'true'"))


def _revoked(driver: Any, url: str) -> bool:
    """Whether the blob URL no longer loads as an image, as once revoked (fetch() is refused by the CSP)."""
    return bool(driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const img = new Image();"
        "img.onload = () => done(false); img.onerror = () => done(true); img.src = arguments[0];", url))


def test_history_then_stream_resumes_with_last_event_id_and_bounds_thumbnails(server: ContractServer) -> None:
    with chromium() as driver:
        driver.get(server.url + "/")
        # The history fills the view, and the stream is asked to resume after its newest event.
        wait_for(driver, lambda d: _count(d, "[data-camera='yard'] .label") == 1, "the classify label from history")
        wait_for(driver, _streaming, "the stream")
        assert server.resumed_from == [doc(2, "door")["id"]]
        assert driver.execute_script("return document.querySelector('[data-camera=yard] .label').textContent") \
            == "label-1"
        # A streamed event shows; when the server ends the stream, the page resumes after it.
        server.push(doc(3, "door"))
        wait_for(driver, lambda d: _count(d, "[data-camera='door'] img.thumb") == 2, "two thumbnails on door")
        first_thumbs = driver.execute_script(
            "return [...document.querySelectorAll('[data-camera=door] img.thumb')].map((i) => i.src)")
        server.end_streams()
        wait_for(driver, lambda d: len(server.resumed_from) == 2 and _streaming(d), "the stream to resume")
        assert server.resumed_from[1] == doc(3, "door")["id"]
        # More results than a camera keeps: the list stays bounded and the old thumbnails' URLs are revoked.
        server.push(*(doc(n, "door") for n in range(4, 4 + PER_CAMERA)))
        newest = doc(3 + PER_CAMERA, "door")["id"]
        wait_for(driver, lambda d: _count(d, f"[data-event='{newest}'] img.thumb") == 1, "the newest thumbnail")
        assert _count(driver, "[data-camera='door'] .event") == PER_CAMERA
        assert all(_revoked(driver, url) for url in first_thumbs)
        kept = driver.execute_script(f"return document.querySelector('[data-event=\"{newest}\"] img.thumb').src")
        assert not _revoked(driver, kept)
        assert _count(driver, "[data-camera='yard'] .event") == 1  # other cameras keep theirs
        assert page_errors(driver) == []
        screenshot(driver, "live-contract")
