"""Writes tests/data/store_v1.db: a store in schema version 1, made by the store code of commit 043b8dc.

Run against that code, e.g.::

    git worktree add /tmp/edged-043b8dc 043b8dc
    PYTHONPATH=/tmp/edged-043b8dc python tests/data/make_store_v1.py tests/data/store_v1.db
    git worktree remove /tmp/edged-043b8dc

What it holds (tests/test_migrate.py relies on it): queued results of two cameras, an ingest error, an
image result whose CloudEvent carries the image (include_images), a result already acked (history
only), one retried (attempts 1, waiting), a dead letter, events still to publish on MQTT, and queued
rows whose events row went as history under space pressure (only the CloudEvent is left).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

from edged.events import NewEvent  # type: ignore[import-not-found,unused-ignore]
from edged.settings import OutboxSettings, SyncSettings
from edged.store import Store  # type: ignore[attr-defined,unused-ignore]

DEVICE = "gw-v1"


def result(camera: str, n: int) -> NewEvent:
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": camera, "function": "classify", "kind": "result",
        "source": {"transport": "mqtt", "camera": camera, "sha256": f"{n:02x}" * 32, "correlation": f"req-{n}",
                   "received_at": "2025-01-01T00:00:00.000Z"},
        "latency_ms": 11.5 + n, "result": {"top": [{"label": "Egyptian cat", "index": 285, "score": 0.81}]},
        "image": None, "error": None,
    }
    return NewEvent("classify", "result", data)


def image(camera: str) -> NewEvent:
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": camera, "function": "grayscale", "kind": "result",
        "source": {"transport": "http", "camera": camera, "sha256": "ab" * 32, "correlation": None,
                   "received_at": "2025-01-01T00:00:01.000Z"},
        "latency_ms": 3.25, "result": None,
        "image": {"content_type": "image/png", "bytes": len(body), "sha256": "cd" * 32}, "error": None,
    }
    return NewEvent("grayscale", "result", data, body=body, content_type="image/png")


def error() -> NewEvent:
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": "cam-a", "function": "", "kind": "error",
        "source": {"transport": "mqtt", "camera": "cam-a", "sha256": "ee" * 32, "correlation": None,
                   "received_at": "2025-01-01T00:00:02.000Z"},
        "latency_ms": 0.5, "result": None, "image": None, "error": {"code": "bad_image", "detail": "not an image"},
    }
    return NewEvent("", "error", data)


async def main(path: Path) -> None:
    # A cap this small makes the store drop history (events rows) while their outbox rows stay queued.
    outbox = OutboxSettings(max_bytes=9 * 1024)
    async with Store(path, DEVICE, outbox, SyncSettings(include_images=True)) as store:
        async def commit(camera: str, events: list[NewEvent], sha: str, mqtt: bool = False) -> list[str]:
            stored = await store.commit_input(transport="mqtt", camera=camera, sha256=sha, received_at=1.7e9,
                                              correlation=b"corr", events=events, publish_mqtt=mqtt)
            return [e.id for e in stored]

        acked = await commit("cam-a", [result("cam-a", 0)], "00" * 32)
        retried = await commit("cam-a", [result("cam-a", 1)], "01" * 32)
        dead = await commit("cam-b", [result("cam-b", 2)], "02" * 32)
        await commit("cam-b", [image("cam-b")], "ab" * 32)
        await commit("cam-a", [error()], "ee" * 32)
        for n in range(3, 9):
            await commit("cam-a" if n % 2 else "cam-b", [result("cam-a" if n % 2 else "cam-b", n)],
                         f"{n:02x}" * 32, mqtt=n >= 7)
        await store.outbox_ack(acked)
        await store.outbox_retry(retried, "HTTP 500 from sidecar", 1.7e9 + 60)
        await store.outbox_dead(dead, "HTTP 400 from sidecar: bad")
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
