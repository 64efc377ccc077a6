"""Outbox benchmark: write cost per result, disk bytes per result, drain rate to a sidecar (single vs bulk).

    .venv/bin/python bench/outbox_bench.py [--n 100000] [--cameras 8] [--dir /var/tmp/x] [--write-only]

Fills a real store (SQLite, WAL, synchronous=FULL, as in production) with ``n`` classify results without
images through ``Store.commit_input``, twice: one input at a time (each commit is its own transaction and
fsync), and with every camera committing at once (``--cameras`` streams, each awaiting its previous
commit, as the MQTT and HTTP paths do: concurrent commits share transactions). It measures the files (db +
WAL as left, and after a checkpoint), then drains a copy through ``DaprSync`` into the sidecar emulator from
tests/ running in its own process (as daprd would be), once with single publishes and once with the bulk
API. ``--write-only`` stops after the writes. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.outbox_floor import BUILD, floor, growth, pieces, wal_pages  # noqa: E402
from edged.events import NewEvent  # noqa: E402
from edged.settings import DaprSettings, OutboxSettings, SyncSettings  # noqa: E402
from edged.status import Components  # noqa: E402
from edged.store import Store  # noqa: E402
from edged.sync.cloudevents import CloudEvents  # noqa: E402
from edged.sync.dapr import DaprSync  # noqa: E402
from tests.samples import classify_result, digest  # noqa: E402
from tests.waiting import until  # noqa: E402

DEVICE = "bench-gw"
#: The floor again with one thing changed: what it would gain (or what an index costs).
FLOOR_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("with a 64 MiB page cache (default 2 MiB)", {"pragmas": ("cache_size = -65536",)}),
    ("with a checkpoint every 10,000 WAL pages (default 1,000)", {"pragmas": ("wal_autocheckpoint = 10000",)}),
    ("with 1 KiB pages (default 4 KiB)", {"page_size": 1024}),
    ("without inputs_by_frame", {"without": "inputs_by_frame"}),
    ("without events_by_camera", {"without": "events_by_camera"}),
)
#: The fill's first and last this many results are timed apart (the cost grows with the store's size).
CHUNK = 8000
DRAIN_SECONDS = 1800.0
OUTBOX = OutboxSettings(max_bytes=4 * 1024**3)

_EMULATOR = """
import sys, threading
sys.path.insert(0, {repo!r})
from tests.dapr_emulator import DaprEmulator
with DaprEmulator() as dapr:
    print(dapr.url, flush=True)
    sys.stdin.read()
    print(len(dapr.published), flush=True)
"""


@contextlib.contextmanager
def emulator() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The sidecar emulator in its own process (its CPU is not ours, as with a real daprd)."""
    proc = subprocess.Popen([sys.executable, "-c", _EMULATOR.format(repo=str(REPO))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdin is not None
    url = proc.stdout.readline().strip()
    try:
        yield url, proc
    finally:
        proc.stdin.close()
        # It exits once its server thread stops; on a loaded machine after 100k publishes that took over 60 s.
        proc.wait(timeout=600)
        proc.stdout.close()


def result_event(camera: str, i: int) -> NewEvent:
    """A classify result shaped like the real ones (tests/samples.py)."""
    return classify_result(camera, i, DEVICE)


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill: per-commit wall times and end times (s), the whole fill's wall and CPU time (all threads:
    the loop's and the writer's), the writer thread's CPU alone, and the transactions it took when the
    store counts them."""

    costs: list[float]
    ends: list[float]
    began: float
    wall: float
    cpu: float
    writer: float
    transactions: int | None


async def fill(path: Path, n: int, cameras: int, *, at_once: bool) -> Fill:
    """Commit ``n`` results one input at a time, or from every camera at once."""
    costs: list[float] = []
    ends: list[float] = []
    async with Store(path, OUTBOX, CloudEvents(DEVICE, SyncSettings()).admit) as store:
        # Counted since the group commit (edged.store.group); older stores have no count.
        counters = store._db.counters  # noqa: SLF001 (a figure for the table, not an API)
        before = getattr(counters, "transactions", None)

        async def one(i: int) -> None:
            camera = f"cam{i % cameras}"
            started = time.perf_counter()
            await store.commit_input(transport="mqtt", camera=camera, sha256=digest(i), received_at=time.time(),
                                     correlation=None, events=[result_event(camera, i)], publish_mqtt=False)
            ended = time.perf_counter()
            costs.append(ended - started)
            ends.append(ended)

        async def stream(camera: int) -> None:
            for i in range(camera, n, cameras):
                await one(i)

        began, cpu, writer = time.perf_counter(), time.process_time(), writer_cpu()
        if at_once:
            await asyncio.gather(*(stream(c) for c in range(cameras)))
        else:
            for i in range(n):
                await one(i)
        wall, cpu, writer = time.perf_counter() - began, time.process_time() - cpu, writer_cpu() - writer
        after = getattr(counters, "transactions", None)
    return Fill(costs, ends, began, wall, cpu, writer, None if before is None or after is None else after - before)


def writer_cpu() -> float:
    """CPU seconds the store's writer thread (edged.store.db, named ``edged.store_0``) has used so far."""
    for thread in threading.enumerate():
        if thread.name.startswith("edged.store") and thread.native_id is not None:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return 0.0


async def drain(path: Path, url: str, *, bulk: bool, batch: int) -> tuple[int, float]:
    """Drain the outbox at ``path``; (events sent, seconds)."""
    async with Store(path, OUTBOX, CloudEvents(DEVICE, SyncSettings()).admit) as store:
        depth = (await store.outbox_state()).depth
        sync = DaprSync(DaprSettings(url=url, bulk=bulk), SyncSettings(batch=batch), store, Components(),
                        cloudevents=CloudEvents(DEVICE, SyncSettings(batch=batch)))
        started = time.perf_counter()
        task = asyncio.create_task(sync.run(), name="edged.sync.drain")
        try:
            # Polling a counter the store keeps in memory; there is no "outbox empty" event to wait on.
            async def empty() -> bool:
                return (await store.outbox_state()).depth == 0

            await until(empty, DRAIN_SECONDS, "the outbox to drain", interval=0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return depth, time.perf_counter() - started


async def drain_local(path: Path, batch: int) -> tuple[int, float]:
    """The store's side of a drain alone: batch, build the CloudEvents, ack; (events, seconds)."""
    cloudevents = CloudEvents(DEVICE, SyncSettings(batch=batch))
    sent = 0
    async with Store(path, OUTBOX, cloudevents.admit) as store:
        started = time.perf_counter()
        while entries := await store.outbox_batch(batch, time.time()):
            bodies = [cloudevents.encode(e) for e in entries]
            await store.outbox_ack([e.id for e in entries])
            sent += len(bodies)
        return sent, time.perf_counter() - started


def fsync_us(directory: Path, n: int = 200) -> float:
    """p50 of one 4 KiB write + fsync on this disk, µs."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"\0" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1e6


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def checkpoint(path: Path) -> None:
    """Move the WAL into the database file (as SQLite does by itself every 1,000 pages) and truncate it."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        con.close()


def copy_db(src: Path, dst: Path) -> Path:
    for part in src.parent.glob(src.name + "*"):
        shutil.copyfile(part, dst.parent / part.name.replace(src.name, dst.name))
    return dst


def remove_db(path: Path) -> None:
    for part in path.parent.glob(path.name + "*"):
        os.remove(part)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="results to queue")
    parser.add_argument("--cameras", type=int, default=8, help="cameras the results come from")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes (default: a temp dir)")
    parser.add_argument("--write-only", action="store_true", help="measure the writes only, no drain")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows: list[tuple[str, str]] = []
        alone = Path(tmp) / "alone.db"
        one_by_one = await fill(alone, args.n, args.cameras, at_once=False)
        remove_db(alone)
        costs_us = sorted(c * 1e6 for c in one_by_one.costs)
        rows.append(("write cost, one at a time, mean (µs/result)", f"{statistics.fmean(costs_us):,.0f}"))
        rows.append(("write cost, one at a time, p50 / p99 (µs)",
                     f"{costs_us[len(costs_us) // 2]:,.0f} / {costs_us[int(len(costs_us) * 0.99)]:,.0f}"))
        base = Path(tmp) / "filled.db"
        filled = await fill(base, args.n, args.cameras, at_once=True)
        costs_us = sorted(c * 1e6 for c in filled.costs)
        wall, cpu = filled.wall * 1e6 / args.n, filled.cpu * 1e6 / args.n
        rows.append((f"write cost, {args.cameras} cameras at once, amortised (µs/result)", f"{wall:,.0f}"))
        rows.append((f"CPU time, {args.cameras} cameras at once, all threads (µs/result)", f"{cpu:,.0f}"))
        rows.append(("  of which the store's writer thread / the rest (the loop) (µs/result)",
                     f"{filled.writer * 1e6 / args.n:,.0f} / {cpu - filled.writer * 1e6 / args.n:,.0f}"))
        rows.append((f"commit latency, {args.cameras} cameras at once, p50 / p99 (µs)",
                     f"{costs_us[len(costs_us) // 2]:,.0f} / {costs_us[int(len(costs_us) * 0.99)]:,.0f}"))
        chunk = min(CHUNK, args.n // 4)
        first, last = growth(filled.began, filled.ends, chunk)
        rows.append((f"  the same, its first / last {chunk:,} results (µs/result)", f"{first:,.0f} / {last:,.0f}"))
        if filled.transactions:
            per = round(args.n / filled.transactions)
            rows.append((f"results per transaction, {args.cameras} cameras at once",
                         f"{args.n / filled.transactions:,.1f}"))
            rows += floors(base, Path(tmp), per, chunk, wall, cpu, filled.writer * 1e6 / args.n)
        rows.append(("fsync of 4 KiB on this disk, p50 (µs)", f"{fsync_us(Path(tmp)):,.0f}"))
        left = db_bytes(base)
        checkpoint(base)
        size = db_bytes(base)
        rows.append(("disk bytes per result (db+wal, as left)", f"{left / args.n:,.0f}"))
        rows.append(("disk bytes per result (db+wal, checkpointed)", f"{size / args.n:,.0f}"))
        if args.write_only:
            report(rows, args.n, args.cameras)
            return
        copy = copy_db(base, Path(tmp) / "drain-local.db")
        sent, seconds = await drain_local(copy, 500)
        rows.append(("store side of a drain, batch 500 (results/s)", f"{sent / seconds:,.0f}"))
        remove_db(copy)
        with emulator() as (url, _):
            for label, bulk, batch in (("single", False, 100), ("bulk", True, 100), ("bulk", True, 500)):
                copy = copy_db(base, Path(tmp) / f"drain-{label}-{batch}.db")
                sent, seconds = await drain(copy, url, bulk=bulk, batch=batch)
                rows.append((f"drain {label}, batch {batch} (results/s)", f"{sent / seconds:,.0f}"))
                remove_db(copy)
    report(rows, args.n, args.cameras)


def floors(base: Path, tmp: Path, per: int, chunk: int, wall: float, cpu: float,
           writer: float) -> list[tuple[str, str]]:
    """The floor beside edged's fill (wall and CPU µs per result), its variants, the WAL pages a
    transaction writes and the breakdown of edged's share above the floor (bench/outbox_floor.py)."""
    rows: list[tuple[str, str]] = []
    bare = floor(base, tmp / "floor.db", per, chunk=chunk)
    remove_db(tmp / "floor.db")
    rows.append((f"floor: the same rows by bare sqlite3, {per} a transaction, wall (µs/result)", f"{bare.wall:,.0f}"))
    rows.append(("floor: the same, CPU (µs/result)", f"{bare.cpu:,.0f}"))
    rows.append((f"floor: its first / last {chunk:,} results, wall (µs/result)",
                 f"{bare.first:,.0f} / {bare.last:,.0f}"))
    for label, kwargs in FLOOR_VARIANTS:
        run = floor(base, tmp / "variant.db", per, chunk=chunk, **kwargs)
        remove_db(tmp / "variant.db")
        rows.append((f"floor {label}, wall / CPU; last {chunk:,}, wall (µs/result)",
                     f"{run.wall:,.0f} / {run.cpu:,.0f}; {run.last:,.0f}"))
    pages, by_tree = wal_pages(base, tmp / "pages.db", per)
    rows.append((f"WAL pages one transaction of {per} results writes, at the fill's size", f"{pages:,.1f}"))
    for name, n in by_tree.most_common():
        rows.append((f"  of which {name}", f"{n:,.1f}"))
    steps = pieces(DEVICE)
    built = steps.pop(BUILD)
    rows.append(("edged above the floor, wall (µs/result)", f"{wall - bare.wall:,.0f}"))
    rows.append(("edged above the floor, CPU (µs/result)", f"{cpu - bare.cpu:,.0f}"))
    rows.append(("  the writer thread above the floor's CPU: the store's steps and glue (µs/result)",
                 f"{writer - bare.cpu:,.0f}"))
    for name, us in steps.items():
        rows.append((f"    of which {name}, timed alone", f"{us:,.1f}"))
    rows.append(("    of which the rest: the writer's glue, and these steps' extra in place (cold caches)",
                 f"{writer - bare.cpu - sum(steps.values()):,.0f}"))
    rows.append(("  the loop thread: the callers' coroutines, futures, wake-ups (µs/result)", f"{cpu - writer:,.0f}"))
    rows.append((f"    of which {BUILD}, timed alone", f"{built:,.1f}"))
    rows.append(("wall not on a CPU (fsync, wake-ups), edged / floor (µs/result)",
                 f"{wall - cpu:,.0f} / {bare.wall - bare.cpu:,.0f}"))
    return rows


def report(rows: list[tuple[str, str]], n: int, cameras: int) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\noutbox benchmark: {n:,} results from {cameras} cameras, SQLite synchronous=FULL, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    for key, value in rows:
        print(f"  {key:<{width}}  {value:>14}")


if __name__ == "__main__":
    asyncio.run(main())
