"""The function pool: loads every module once, then runs calls and decodes on a bounded set of threads.

Admission is bounded: at most ``workers + queue`` calls and decodes are admitted (running or waiting);
one more raises Overloaded at once, so memory never grows with load. Every call gets a fresh Store with
its memory limit and an epoch deadline; one ticker thread advances the engine's epoch every 5 ms.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import wasmtime

from edged.errors import FunctionError, Overloaded, UnknownFunction
from edged.frames import Frame, decode
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.command import CommandRunner
from edged.wasm.engine import CacheStats, InstanceSlots, WasmEngine
from edged.wasm.host.link import HostExtension
from edged.wasm.outcome import CallResult, FunctionLoadError, trap_summary
from edged.wasm.reactor import FrameRunner
from edged.wasm.runner import FunctionRunner
from edged.wasm.scratch import Scratch, make_scratch_root, remove_scratch_root
from edged.wasm.stats import FunctionStats, describe_function

__all__ = ["TICK_SECONDS", "CallResult", "FunctionLoadError", "FunctionPool", "OnCall"]

log = logging.getLogger(__name__)

#: Epoch tick; a call's timeout is rounded up to whole ticks plus one.
TICK_SECONDS = 0.005
MiB = 1024 * 1024

#: ``on_call(function, outcome, seconds)``: outcome is "ok" or an error code; called on the worker thread.
OnCall = Callable[[str, str, float], None]
_T = TypeVar("_T")
#: The runner for each ``abi`` setting.
_RUNNERS: dict[str, type[FunctionRunner]] = {FrameRunner.abi: FrameRunner, CommandRunner.abi: CommandRunner}


def _decode(data: bytes, max_pixels: int) -> Frame:
    return decode(data, max_pixels=max_pixels)


class FunctionPool:
    """Runs Wasm functions (docs/ABI.md) in worker threads. Use as ``with pool:`` or ``async with pool:``.

    ``extension`` adds imports for some functions (the WASI-NN host) or is None; ``on_call`` feeds metrics.
    """

    def __init__(self, functions: Mapping[str, FunctionSettings], pool: PoolSettings, cache_dir: Path,
                 extension: HostExtension | None = None, *, on_call: OnCall | None = None) -> None:
        self._functions = dict(functions)
        self._settings = pool
        self._cache_dir = cache_dir
        self._extension = extension
        self._on_call = on_call
        self._capacity = pool.workers + pool.queue
        self._stats = {name: FunctionStats() for name in self._functions}
        self._runners: dict[str, FunctionRunner] = {}
        self._lock = threading.Lock()
        #: Notified when the last admitted job is released (close waits for it).
        self._settled = threading.Condition(self._lock)
        self._admitted = 0
        self._executing = 0
        self._overloaded = 0
        self._executor: ThreadPoolExecutor | None = None
        self._engine: WasmEngine | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._scratch_root: Path | None = None
        self._local = threading.local()
        #: Jobs running at once, on the workers or on callers' threads (decode_and_call_sync).
        self._running = threading.BoundedSemaphore(pool.workers)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Compile or load every module, validate it, then start the ticker and the workers.

        Raises FunctionLoadError naming the first function whose module is unusable.
        """
        if self._engine is not None:
            raise RuntimeError("the pool is already started")
        engine = WasmEngine(self._cache_dir, self._slots())
        self._engine = engine
        self._stop.clear()
        # Validation instantiates frame-v1 modules, which needs epochs advancing: start the ticker first.
        self._ticker = threading.Thread(target=self._tick, name="edged-wasm-epoch", daemon=True)
        self._ticker.start()
        try:
            for name, settings in self._functions.items():
                self._runners[name] = self._load(engine, name, settings)
            self._scratch_root = make_scratch_root()
            self._executor = ThreadPoolExecutor(self._settings.workers, thread_name_prefix="edged-wasm")
        except BaseException:
            self._stop_ticker()
            self._engine = None
            self._runners.clear()
            raise
        log.info("function pool ready: %d functions, %d workers, queue %d, %s instance allocator",
                 len(self._runners), self._settings.workers, self._settings.queue, self.allocator)

    def _slots(self) -> InstanceSlots:
        """One instance slot per worker (a Store lives only while its call runs), plus one for start-up checks
        and one spare; each as large as the largest memory_mb."""
        largest = max((fn.memory_mb for fn in self._functions.values()), default=1)
        return InstanceSlots(count=self._settings.workers + 2, max_memory_bytes=largest * MiB,
                             keep_resident_bytes=self._settings.keep_resident_mb * MiB)

    def _load(self, engine: WasmEngine, name: str, settings: FunctionSettings) -> FunctionRunner:
        try:
            module = engine.load_module(settings.module)
        except OSError as exc:
            raise FunctionLoadError(name, f"cannot read {settings.module}: {exc.strerror or exc}") from exc
        except wasmtime.WasmtimeError as exc:
            raise FunctionLoadError(name, f"{settings.module} is not a valid module: "
                                          f"{trap_summary(str(exc))}") from exc
        runner = _RUNNERS[settings.abi](name, settings, module, engine.engine, TICK_SECONDS * 1000, self._extension)
        runner.validate()
        return runner

    def close(self) -> None:
        """Stop admitting, let admitted calls finish (each is bounded by its timeout), stop the ticker."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            # The ticker must outlive the workers: it is what interrupts a runaway guest.
            executor.shutdown(wait=True)
        with self._settled:
            # Jobs running on callers' threads (decode_and_call_sync) need the ticker and scratch too.
            self._settled.wait_for(lambda: self._admitted == 0)
        self._stop_ticker()
        if self._scratch_root is not None:
            remove_scratch_root(self._scratch_root)
            self._scratch_root = None
        self._runners.clear()
        self._engine = None

    def _stop_ticker(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None

    def _tick(self) -> None:
        engine = self._engine
        assert engine is not None
        while not self._stop.wait(TICK_SECONDS):
            engine.increment_epoch()

    def __enter__(self) -> FunctionPool:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> FunctionPool:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)

    # -- admission -----------------------------------------------------------------------------------

    def _admit(self) -> ThreadPoolExecutor:
        """Count one more admitted job (raise Overloaded when full); the caller must ``_release`` it."""
        with self._lock:
            executor = self._executor
            if executor is None:
                raise Overloaded("the function pool is not running")
            if self._admitted >= self._capacity:
                self._overloaded += 1
                raise Overloaded(f"all {self._settings.workers} workers are busy and {self._settings.queue} "
                                 f"calls are waiting")
            self._admitted += 1
        return executor

    def _permitted(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` holding one of the ``workers`` permits (shared with callers that run jobs themselves)."""
        with self._running:
            with self._lock:
                self._executing += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._executing -= 1

    def _submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        executor = self._admit()
        try:
            future = executor.submit(self._permitted, fn, *args)
        except RuntimeError as exc:  # shut down between the check and the submit
            self._release(None)
            raise Overloaded("the function pool is shutting down") from exc
        # Runs on completion and on cancellation (a caller gave up before a worker took the call).
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._admitted -= 1
            if self._admitted == 0:
                self._settled.notify_all()

    # -- calls ---------------------------------------------------------------------------------------

    def _runner(self, name: str) -> FunctionRunner:
        runner = self._runners.get(name)
        if runner is None:
            if name in self._functions:
                raise Overloaded("the function pool is not running")
            raise UnknownFunction(f"no function named {name!r}")
        return runner

    async def call(self, name: str, frame: Frame) -> CallResult:
        """Run function ``name`` on ``frame``; raise UnknownFunction, Overloaded or a FunctionError."""
        return await asyncio.wrap_future(self._submit(self._run, self._runner(name), frame))

    async def decode(self, data: bytes, max_pixels: int) -> Frame:
        """``edged.frames.decode`` on a worker; counts against the same bound as calls."""
        return await asyncio.wrap_future(self._submit(_decode, data, max_pixels))

    async def decode_and_call(self, data: bytes, max_pixels: int,
                              name: str) -> tuple[Frame, CallResult | FunctionError]:
        """Decode ``data`` and run ``name`` on it in one worker hand-off (one admission slot).

        Raises ImageError for an unacceptable image, UnknownFunction or Overloaded; a failed call is
        returned, not raised, since the frame it ran on is wanted either way.
        """
        job = self._submit(self._decode_and_run, self._runner(name), data, max_pixels)
        return await asyncio.wrap_future(job)

    def decode_and_call_sync(self, data: bytes, max_pixels: int, name: str) -> CallResult:
        """Decode and call on the calling thread, for code that would only wait for a worker (``edged invoke``).

        No hand-off to a worker and back (two thread wake-ups). The job is admitted like any other and
        holds one of the ``workers`` permits while it runs, so at most ``workers`` jobs run at once
        however they came in. The thread gets its own linker and scratch files on its first call: meant
        for a few long-lived threads. Raises ImageError, UnknownFunction, Overloaded or the call's
        FunctionError.
        """
        runner = self._runner(name)
        self._admit()
        try:
            _frame, outcome = self._permitted(self._decode_and_run, runner, data, max_pixels)
        finally:
            self._release(None)
        if isinstance(outcome, FunctionError):
            raise outcome
        return outcome

    def _decode_and_run(self, runner: FunctionRunner, data: bytes,
                        max_pixels: int) -> tuple[Frame, CallResult | FunctionError]:
        frame = _decode(data, max_pixels)
        try:
            return frame, self._run(runner, frame)
        except FunctionError as exc:
            return frame, exc

    def _scratch(self) -> Scratch:
        scratch: Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            assert self._scratch_root is not None
            scratch = Scratch(self._scratch_root)
            self._local.scratch = scratch
        return scratch

    def _run(self, runner: FunctionRunner, frame: Frame) -> CallResult:
        """On a worker thread: one call, counted and logged whatever happens to it."""
        started = time.perf_counter()
        try:
            result = runner.call(frame, self._scratch())
        except FunctionError as exc:
            log.warning("function %s failed: %s: %s", runner.name, exc.code, exc.detail,
                        extra={"FUNCTION": runner.name, "ERROR_CODE": exc.code})
            self._record(runner.name, exc.code, time.perf_counter() - started)
            raise
        except Exception:
            log.exception("function %s: internal error", runner.name, extra={"FUNCTION": runner.name})
            self._record(runner.name, "internal", time.perf_counter() - started)
            raise
        self._record(runner.name, "ok", time.perf_counter() - started)
        return result

    def _record(self, name: str, outcome: str, seconds: float) -> None:
        self._stats[name].record(outcome, seconds)
        if self._on_call is not None:
            try:
                self._on_call(name, outcome, seconds)
            except Exception:
                log.exception("on_call hook failed")

    # -- introspection -------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Calls and decodes admitted at most (running plus waiting)."""
        return self._capacity

    @property
    def in_flight(self) -> int:
        """Jobs admitted and not finished: running plus waiting."""
        with self._lock:
            return self._admitted

    @property
    def running(self) -> int:
        """Jobs running now (each holds one of the ``workers`` permits)."""
        with self._lock:
            return self._executing

    @property
    def overloaded(self) -> int:
        """Calls and decodes refused with Overloaded so far."""
        with self._lock:
            return self._overloaded

    @property
    def allocator(self) -> str | None:
        """"pooling" (instance slots reused, zeroed between calls) or "on-demand"; None before start."""
        if self._engine is None:
            return None
        return "pooling" if self._engine.pooling else "on-demand"

    @property
    def cache_stats(self) -> CacheStats | None:
        """How modules were loaded at start (from the compiled cache or compiled), None before start."""
        return self._engine.stats if self._engine is not None else None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per function: calls, errors by code, latency (count, sum, last, p50 and p99 of recent calls)."""
        return {name: stats.snapshot() for name, stats in self._stats.items()}

    def describe(self) -> list[dict[str, Any]]:
        """Per function: name, ABI, input, limits, grants, calls, errors and latency."""
        return [describe_function(name, fn, self._stats[name]) for name, fn in self._functions.items()]
