"""What stored result images cost, and whether history reads slow the writer down.

    .venv/bin/python bench/images_bench.py [--n 300] [--reads 200]

1. Two stores side by side, commits interleaved (same machine noise): grayscale results of a real photo
   (tests/data/chelsea.jpg, 451x300, PNG at zlib level 1 as edged encodes it) committed with their image
   body (a reader is configured: [history] images, sync.include_images or mqtt.publish_images) and
   without it (only the image's metadata). Prints commit time per result, one at a time and with 8
   cameras at once (their commits share transactions: group commit), and disk bytes per result (db + WAL
   after a checkpoint).
2. Commit time while a reader pages 500 events at a time, the reads on the history's own connection
   (as edged does) or on the writer thread (the alternative). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

import edged.store.history as history  # noqa: E402
from edged.events import NewEvent  # noqa: E402
from edged.settings import OutboxSettings, SyncSettings  # noqa: E402
from edged.store import Query, Store  # noqa: E402
from edged.sync.cloudevents import CloudEvents  # noqa: E402
from tests.samples import digest  # noqa: E402

DEVICE = "bench-gw"
OUTBOX = OutboxSettings(max_bytes=4 * 1024**3)
#: cameras committing at once in the group-commit run
CAMERAS = 8


def gray_png() -> bytes:
    with Image.open(REPO / "tests" / "data" / "chelsea.jpg") as img:
        out = io.BytesIO()
        img.convert("L").save(out, format="PNG", compress_level=1)
        return out.getvalue()


def gray_event(camera: str, i: int, png: bytes, keep: bool) -> NewEvent:
    data: dict[str, Any] = {
        "device_id": DEVICE, "camera": camera, "function": "grayscale", "kind": "result",
        "source": {"transport": "mqtt", "camera": camera, "sha256": digest(i), "correlation": None,
                   "received_at": "2026-11-28T09:00:00.000Z"},
        "latency_ms": 3.1, "result": None, "error": None,
        "image": {"content_type": "image/png", "bytes": len(png), "sha256": hashlib.sha256(png).hexdigest()},
    }
    if keep:
        return NewEvent("grayscale", "result", data, body=png, content_type="image/png")
    return NewEvent("grayscale", "result", data)


def open_store(path: Path) -> Store:
    return Store(path, OUTBOX, CloudEvents(DEVICE, SyncSettings()).admit)


async def commit(store: Store, i: int, event: NewEvent) -> float:
    started = time.perf_counter()
    await store.commit_input(transport="mqtt", camera=event.data["camera"], sha256=digest(i),
                             received_at=time.time(), correlation=None, events=[event], publish_mqtt=False)
    return time.perf_counter() - started


def disk_bytes(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        con.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def images(root: Path, n: int) -> None:
    png = gray_png()
    costs: dict[bool, list[float]] = {True: [], False: []}
    paths = {keep: root / f"{'with' if keep else 'without'}.db" for keep in (True, False)}
    async with open_store(paths[True]) as with_body, open_store(paths[False]) as without:
        for i in range(n):
            for keep, store in ((True, with_body), (False, without)):
                costs[keep].append(await commit(store, i, gray_event(f"cam{i % 8}", i, png, keep)))
    at_once = {keep: await all_cameras(root / f"at-once-{keep}.db", n, png, keep) for keep in (True, False)}
    print(f"grayscale result: PNG of {len(png):,} bytes; {n} results per store; one at a time: commits of the "
          f"two stores interleaved; {CAMERAS} cameras at once: each camera awaits its previous commit, "
          "concurrent commits share a transaction (group commit)\n")
    # at once: the whole fill's wall time over the results (amortised)
    print(f"| image body | one at a time, p50 ms | one at a time, mean ms | {CAMERAS} cameras at once, ms/result | "
          "disk bytes/result |")
    print("|---|---|---|---|---|")
    for keep in (True, False):
        c = costs[keep]
        print(f"| {'kept' if keep else 'not stored'} | {statistics.median(c) * 1e3:.3f} | "
              f"{statistics.fmean(c) * 1e3:.3f} | {at_once[keep] * 1e3 / n:.3f} | "
              f"{disk_bytes(paths[keep]) / n:,.0f} |")



async def all_cameras(path: Path, n: int, png: bytes, keep: bool) -> float:
    """``n`` results from every camera at once (as the MQTT and HTTP paths commit); the wall seconds."""
    async with open_store(path) as store:
        async def stream(camera: int) -> None:
            for i in range(camera, n, CAMERAS):
                await commit(store, i, gray_event(f"cam{camera}", i, png, keep))

        started = time.perf_counter()
        await asyncio.gather(*(stream(c) for c in range(CAMERAS)))
        return time.perf_counter() - started


async def read_loop(store: Store, where: str, stop: asyncio.Event) -> None:
    db = store._db  # noqa: SLF001 - the writer's executor, only for the comparison
    while not stop.is_set():
        if where == "reader connection":
            await store.history.page(Query(limit=500))
        elif where == "writer thread":
            await db.run(lambda: history._page(db.con, Query(limit=500), False))  # noqa: SLF001
        else:
            return


async def reads(root: Path, n: int) -> None:
    event = gray_event("cam0", 0, b"", keep=False)
    results: dict[str, list[float]] = {}
    for where in ("none", "reader connection", "writer thread"):
        path = root / f"reads-{where.replace(' ', '-')}.db"
        async with open_store(path) as store:
            for i in range(2000):  # something to page through
                await commit(store, i, event)
            stop = asyncio.Event()

            task = asyncio.create_task(read_loop(store, where, stop), name="bench.reader")
            results[where] = [await commit(store, 10_000 + i, event) for i in range(n)]
            stop.set()
            await task
    print(f"\n## Commit time while a reader pages 500 events in a loop ({n} commits each)\n")
    print("| reads on | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
    for where, c in results.items():
        c.sort()
        print(f"| {where} | {statistics.median(c) * 1e3:.3f} | {c[int(len(c) * 0.99) - 1] * 1e3:.3f} | "
              f"{statistics.fmean(c) * 1e3:.3f} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="results per store")
    parser.add_argument("--reads", type=int, default=300, help="commits measured while reading; 0: skip that part")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    args = parser.parse_args()
    print(f"## What a stored image costs (load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)\n")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        await images(Path(tmp), args.n)
        if args.reads:  # 0: the stored-image figures only (make bench-quick)
            await reads(Path(tmp), args.reads)


if __name__ == "__main__":
    asyncio.run(main())
