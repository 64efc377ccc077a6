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
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.events import NewEvent  # noqa: E402
from edged.settings import DaprSettings, OutboxSettings, SyncSettings  # noqa: E402
from edged.status import Components  # noqa: E402
from edged.store import Store  # noqa: E402
from edged.sync.cloudevents import CloudEvents  # noqa: E402
from edged.sync.dapr import DaprSync  # noqa: E402
from tests.samples import classify_result, digest  # noqa: E402
from tests.waiting import until  # noqa: E402

DEVICE = "bench-gw"
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
        proc.wait(timeout=60)
        proc.stdout.close()


def result_event(camera: str, i: int) -> NewEvent:
    """A classify result shaped like the real ones (tests/samples.py)."""
    return classify_result(camera, i, DEVICE)


async def fill(path: Path, n: int, cameras: int, *,
               at_once: bool) -> tuple[list[float], float, float, int | None]:
    """Commit ``n`` results one input at a time, or from every camera at once; (the per-commit wall times
    in seconds, the whole fill's wall and CPU time (all threads: the loop's and the writer's), the
    transactions it took when the store counts them)."""
    costs: list[float] = []
    async with Store(path, OUTBOX, CloudEvents(DEVICE, SyncSettings()).admit) as store:
        # Counted since the group commit (edged.store.group); older stores have no count.
        counters = store._db.counters  # noqa: SLF001 (a figure for the table, not an API)
        before = getattr(counters, "transactions", None)

        async def one(i: int) -> None:
            camera = f"cam{i % cameras}"
            started = time.perf_counter()
            await store.commit_input(transport="mqtt", camera=camera, sha256=digest(i), received_at=time.time(),
                                     correlation=None, events=[result_event(camera, i)], publish_mqtt=False)
            costs.append(time.perf_counter() - started)

        async def stream(camera: int) -> None:
            for i in range(camera, n, cameras):
                await one(i)

        began, cpu = time.perf_counter(), time.process_time()
        if at_once:
            await asyncio.gather(*(stream(c) for c in range(cameras)))
        else:
            for i in range(n):
                await one(i)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        after = getattr(counters, "transactions", None)
    return costs, wall, cpu, None if before is None or after is None else after - before


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


async def floor(filled: Path, target: Path, per_transaction: int) -> tuple[float, float]:
    """SQLite's own share: the rows ``filled`` holds (events, outbox, inputs), inserted again into an empty
    store of the same schema and pragmas by bare sqlite3, ``per_transaction`` inputs a transaction (one
    executemany per table, synchronous=FULL), with nothing else per result; (wall, CPU) µs per result."""
    async with Store(target, OUTBOX, CloudEvents(DEVICE, SyncSettings()).admit):
        pass  # the schema, as edged makes it
    src = sqlite3.connect(filled)
    try:
        events = src.execute("SELECT seq, id, camera, function, kind, data, body, content_type, created_at, "
                             "mqtt_pending FROM events ORDER BY seq").fetchall()
        outbox = dict(src.execute("SELECT seq, with_image FROM outbox"))
        inputs = src.execute("SELECT frame, received_at, first_seq, events FROM inputs ORDER BY id").fetchall()
    finally:
        src.close()
    by_seq = {row[0]: row for row in events}
    con = sqlite3.connect(target, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        began, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(inputs), per_transaction):
            group = inputs[start:start + per_transaction]
            seqs = [seq for _f, _r, first, n in group for seq in range(first, first + n)]
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO events (seq, id, camera, function, kind, data, body, content_type, "
                            "created_at, mqtt_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [by_seq[seq] for seq in seqs])
            con.executemany("INSERT INTO outbox (seq, with_image) VALUES (?, ?)",
                            [(seq, outbox[seq]) for seq in seqs if seq in outbox])
            con.executemany("INSERT INTO inputs (frame, received_at, first_seq, events) VALUES (?, ?, ?, ?)", group)
            con.execute("COMMIT")
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        con.close()
    return wall * 1e6 / len(inputs), cpu * 1e6 / len(inputs)


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
        costs, _, _, _ = await fill(alone, args.n, args.cameras, at_once=False)
        remove_db(alone)
        costs_us = sorted(c * 1e6 for c in costs)
        rows.append(("write cost, one at a time, mean (µs/result)", f"{statistics.fmean(costs_us):,.0f}"))
        rows.append(("write cost, one at a time, p50 / p99 (µs)",
                     f"{costs_us[len(costs_us) // 2]:,.0f} / {costs_us[int(len(costs_us) * 0.99)]:,.0f}"))
        base = Path(tmp) / "filled.db"
        costs, wall, cpu, transactions = await fill(base, args.n, args.cameras, at_once=True)
        costs_us = sorted(c * 1e6 for c in costs)
        rows.append((f"write cost, {args.cameras} cameras at once, amortised (µs/result)",
                     f"{wall * 1e6 / args.n:,.0f}"))
        rows.append((f"CPU time, {args.cameras} cameras at once, all threads (µs/result)",
                     f"{cpu * 1e6 / args.n:,.0f}"))
        rows.append((f"commit latency, {args.cameras} cameras at once, p50 / p99 (µs)",
                     f"{costs_us[len(costs_us) // 2]:,.0f} / {costs_us[int(len(costs_us) * 0.99)]:,.0f}"))
        if transactions:
            rows.append((f"results per transaction, {args.cameras} cameras at once", f"{args.n / transactions:,.1f}"))
        if transactions:
            wall_floor, cpu_floor = await floor(base, Path(tmp) / "floor.db", round(args.n / transactions))
            remove_db(Path(tmp) / "floor.db")
            rows.append((f"floor: the same rows by bare sqlite3, {round(args.n / transactions)} a transaction, "
                         "wall (µs/result)", f"{wall_floor:,.0f}"))
            rows.append(("floor: the same, CPU (µs/result)", f"{cpu_floor:,.0f}"))
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


def report(rows: list[tuple[str, str]], n: int, cameras: int) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\noutbox benchmark: {n:,} results from {cameras} cameras, SQLite synchronous=FULL, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    for key, value in rows:
        print(f"  {key:<{width}}  {value:>14}")


if __name__ == "__main__":
    asyncio.run(main())
