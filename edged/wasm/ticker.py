"""What runs beside the pool's workers: the epoch ticker, and the workers' scratch files it keeps bounded.

One thread advances the engine's epoch every tick while work runs (a call's timeout is counted in ticks) and,
on the same tick, cuts any worker's stdio file back to its limit (``edged.wasm.scratch``). The ticker must
outlive every call: it is what interrupts a runaway guest.

The tick is ``TICK_SECONDS`` (5 ms), longer (up to ``MAX_TICK_SECONDS``) when every function's timeout is
long: ``tick_for`` keeps each timeout at least ``TICKS_PER_TIMEOUT`` ticks. Each tick wakes the thread, and on
a busy VM a wake-up costs ~80 us of CPU whatever it does; with the default 5 s timeouts a 20 ms tick wakes it
50 times a second instead of 200 (measured in bench/mqtt_pipeline_bench.py: 1.6 -> 0.7 ms of CPU per frame).
A call is interrupted between its deadline and two ticks after it, never before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edged.wasm.engine import WasmEngine
from edged.wasm.scratch import Scratch, StdioWatch, make_scratch_root, remove_scratch_root

__all__ = ["MAX_TICK_SECONDS", "TICK_SECONDS", "TICKS_PER_TIMEOUT", "Ticker", "WorkerFiles", "tick_for"]

#: The shortest epoch tick; a call's timeout is rounded up to whole ticks plus one.
TICK_SECONDS = 0.005
#: The longest: what a stdio flood may write past its limit between two checks stays bounded.
MAX_TICK_SECONDS = 0.02
#: A timeout spans at least this many ticks (its rounding stays under 0.5 % of it, plus one tick).
TICKS_PER_TIMEOUT = 200


def tick_for(timeouts_ms: Iterable[int]) -> float:
    """The tick (seconds) of a pool whose functions have these timeouts."""
    shortest = min(timeouts_ms, default=0) / 1000
    return min(MAX_TICK_SECONDS, max(TICK_SECONDS, shortest / TICKS_PER_TIMEOUT))

log = logging.getLogger(__name__)


class WorkerFiles:
    """A scratch root for the pool (locked for its life) and one Scratch per thread that runs calls."""

    def __init__(self) -> None:
        self.watch = StdioWatch()
        self._root: Path | None = None
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def root(self) -> Path | None:
        return self._root

    def open(self) -> None:
        self._root = make_scratch_root()

    def get(self, *, check: bool = True) -> Scratch:
        """This thread's Scratch, made on its first call, and made again (root too) when someone removed it.

        ``check=False`` skips looking (a stat) for a call that will not touch the files (no WASI context).
        """
        scratch: Scratch | None = getattr(self._local, "scratch", None)
        if scratch is not None and check and not scratch.dir.is_dir():
            log.warning("scratch directory %s was removed by someone else: making it again", scratch.dir)
            self.watch.discard(scratch)
            scratch = None
        if scratch is None:
            with self._lock:
                assert self._root is not None, "the pool's scratch root is not open"
                if not self._root.is_dir():
                    remove_scratch_root(self._root)  # releases the lock file's descriptor
                    self._root = make_scratch_root()
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
    """The epoch ticker thread of one engine; ``start`` and ``stop`` may be called again.

    It ticks only while some work holds it (``hold``/``let_go``, or ``busy()``: a running call or decode,
    start-up checks) and parks on an Event with no timeout once a tick finds nothing held: an idle daemon
    does not wake for it. Parking at the next tick rather than when the last holder lets go keeps a
    stream of calls from waking the thread (and taking the GIL from the worker) once per call.
    """

    def __init__(self, watch: StdioWatch) -> None:
        self._watch = watch
        self._stop = threading.Event()
        self._active = threading.Event()
        self._lock = threading.Lock()
        self._holders = 0
        self._thread: threading.Thread | None = None
        #: Seconds between epochs (``tick_for``), fixed from ``start`` to ``stop``.
        self.tick = TICK_SECONDS

    def start(self, engine: WasmEngine, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, args=(engine,), name="edged-wasm-epoch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._active.set()  # wake it if parked
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._holders == 0:
                self._active.clear()

    def hold(self) -> None:
        """Tick until the matching ``let_go`` (and while any other holder holds it)."""
        with self._lock:
            self._holders += 1
            if not self._active.is_set():
                self._active.set()

    def let_go(self) -> None:
        with self._lock:
            self._holders -= 1

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Tick while this block runs (and while any other holder's does)."""
        self.hold()
        try:
            yield
        finally:
            self.let_go()

    @property
    def parked(self) -> bool:
        """No work holds the ticker: it is waiting, not ticking."""
        return not self._active.is_set()

    def _tick(self, engine: WasmEngine) -> None:
        while True:
            self._active.wait()
            # A plain sleep: Event.wait with a timeout costs a lock, a condition and several GIL round trips
            # per tick. Stopping waits one tick at most.
            time.sleep(self.tick)
            if self._stop.is_set():
                return
            engine.increment_epoch()
            self._watch.check()
            with self._lock:
                if self._holders == 0 and not self._stop.is_set():
                    self._active.clear()
