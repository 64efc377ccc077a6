"""What runs beside the pool's workers: the epoch ticker, and the workers' scratch files it keeps bounded.

One thread advances the engine's epoch every ``TICK_SECONDS`` (a call's timeout is counted in ticks)
and, on the same tick, cuts any worker's stdio file back to its limit (``edged.wasm.scratch``). The
ticker must outlive every call: it is what interrupts a runaway guest.
"""

from __future__ import annotations

import threading
from pathlib import Path

from edged.wasm.engine import WasmEngine
from edged.wasm.scratch import Scratch, StdioWatch, make_scratch_root, remove_scratch_root

__all__ = ["TICK_SECONDS", "Ticker", "WorkerFiles"]

#: Epoch tick; a call's timeout is rounded up to whole ticks plus one.
TICK_SECONDS = 0.005


class WorkerFiles:
    """A scratch root for the pool (locked for its life) and one Scratch per thread that runs calls."""

    def __init__(self) -> None:
        self.watch = StdioWatch()
        self._root: Path | None = None
        self._local = threading.local()

    @property
    def root(self) -> Path | None:
        return self._root

    def open(self) -> None:
        self._root = make_scratch_root()

    def get(self) -> Scratch:
        """This thread's Scratch, made on its first call."""
        scratch: Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            assert self._root is not None, "the pool's scratch root is not open"
            scratch = Scratch(self._root)
            self.watch.add(scratch)
            self._local.scratch = scratch
        return scratch

    def close(self) -> None:
        """Close every Scratch and remove the root; stop the ticker first (it uses their handles)."""
        self.watch.close()
        if self._root is not None:
            remove_scratch_root(self._root)
            self._root = None
        self._local = threading.local()  # callers' threads get fresh files if the pool starts again


class Ticker:
    """The epoch ticker thread of one engine; ``start`` and ``stop`` may be called again."""

    def __init__(self, watch: StdioWatch) -> None:
        self._watch = watch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, engine: WasmEngine) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, args=(engine,), name="edged-wasm-epoch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _tick(self, engine: WasmEngine) -> None:
        while not self._stop.wait(TICK_SECONDS):
            engine.increment_epoch()
            self._watch.check()
