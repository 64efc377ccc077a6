"""What counting MQTT attempts costs the store (issue 11, poison frames). Prints a table; asserts nothing.

Each frame's attempt is committed (fsync, synchronous=FULL) before its functions run, and deleted in
the transaction that commits the frame. Measured on a real store in a temporary directory:
- one frame at a time: count_attempt, then commit_input (the attempt's own transaction is the cost);
- N frames taken at once (as MQTT delivers up to max_inflight): their attempts share transactions;
- commit_input alone, for comparison.

    .venv/bin/python bench/attempts_bench.py [--frames 400]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.events import NewEvent  # noqa: E402
from edged.settings import OutboxSettings, SyncSettings  # noqa: E402
from edged.store import Store  # noqa: E402
from edged.sync.cloudevents import CloudEvents  # noqa: E402


def result(n: int) -> NewEvent:
    return NewEvent("classify", "result", {"camera": "cam", "kind": "result", "result": {"label": "cat", "n": n}})


async def commit(store: Store, n: int) -> None:
    await store.commit_input(transport="mqtt", camera="cam", sha256=f"{n:064x}", received_at=time.time(),
                             correlation=None, events=[result(n)], publish_mqtt=True)


async def per_frame_ms(store: Store, frames: int, start: int, concurrent: int, count: bool,
                       commits: bool = True) -> float:
    """Wall time per frame of ``frames`` frames, ``concurrent`` at a time."""
    async def one(n: int) -> None:
        if count:
            await store.count_attempt("cam", f"{n:064x}")
        if commits:
            await commit(store, n)
        else:
            await store.count_attempt("cam", f"{n:064x}", -1)

    began = time.perf_counter()
    for first in range(start, start + frames, concurrent):
        await asyncio.gather(*(one(n) for n in range(first, first + concurrent)))
    return (time.perf_counter() - began) * 1000 / frames


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "edged.db", OutboxSettings(), CloudEvents("bench", SyncSettings()).admit)
        async with store:
            await per_frame_ms(store, 50, 10**6, 1, True)  # warm up
            print("| frames at once | commit only, ms/frame | count + commit, ms/frame | attempt cost, ms/frame "
                  "| count + take back (no commit), ms/frame |")
            print("|---|---|---|---|---|")
            start = 0
            for concurrent in (1, 4, 16):
                without, with_count, alone = [], [], []
                for _ in range(3):
                    without.append(await per_frame_ms(store, args.frames, start, concurrent, False))
                    start += args.frames
                    with_count.append(await per_frame_ms(store, args.frames, start, concurrent, True))
                    start += args.frames
                    alone.append(await per_frame_ms(store, args.frames, start, concurrent, True, commits=False))
                    start += args.frames
                a, b, c = (statistics.median(x) for x in (without, with_count, alone))
                print(f"| {concurrent} | {a:.3f} | {b:.3f} | {b - a:.3f} | {c:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
