"""The function pool: loads every module once, then runs calls and decodes on a bounded set of threads.

Admission is bounded twice: at most ``workers + queue`` calls and decodes are admitted (running or
waiting), and what they hold fits in the memory budget (edged.wasm.admission); past either, Overloaded
is raised at once, so memory never grows with load. Every call gets a fresh Store with its memory limit and
an epoch deadline; a ticker thread advances the epoch every 5 ms and keeps the workers' stdio files within
their limits (edged.wasm.scratch). A frame's decode gets the deadline of the calls it feeds (counted from
when the work starts) and a cancel event set when the pool starts closing: no decode holds a shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import wasmtime

from edged.budget import MemoryBudget
from edged.errors import FunctionError, Overloaded, UnknownFunction
from edged.frames import Frame, decode
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.admission import DEFAULT_MAX_RESULT_PIXELS, NO_BUDGET, CallMemory, FrameHold
from edged.wasm.engine import InstanceSlots, WasmEngine
from edged.wasm.host.link import HostExtension
from edged.wasm.need import FULL_FRAME, FramePlan, frame_for, frame_plan
from edged.wasm.outcome import CallResult, FunctionLoadError, trap_summary
from edged.wasm.poolstate import OnCall, OnOutcome, PoolState
from edged.wasm.runner import FunctionRunner
from edged.wasm.stats import FunctionStats
from edged.wasm.table import FunctionTable, load_runners
from edged.wasm.ticker import TICK_SECONDS, tick_for
from edged.wasm.workers import Job, Permits, Workers

__all__ = ["DEFAULT_MAX_RESULT_PIXELS", "TICK_SECONDS", "CallResult", "FunctionLoadError", "FunctionPool",
           "OnCall", "OnOutcome"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024

_T = TypeVar("_T")


class FunctionPool(PoolState):
    """Runs Wasm functions (docs/ABI.md) in worker threads. Use as ``with pool:`` or ``async with pool:``.

    ``extension`` adds imports for some functions (the WASI-NN host) or is None; ``on_call`` feeds metrics.
    ``budget`` is the process's memory budget (default: none, for tools and tests); ``max_result_pixels``
    bounds a frame result, as the input limit bounds a frame: encoding one costs ~5-10 bytes a pixel.
    """

    def __init__(self, functions: Mapping[str, FunctionSettings], pool: PoolSettings, cache_dir: Path,
                 extension: HostExtension | None = None, *, on_call: OnCall | None = None,
                 budget: MemoryBudget | None = None,
                 max_result_pixels: int = DEFAULT_MAX_RESULT_PIXELS, min_slot_mb: int = 1) -> None:
        super().__init__(functions, pool, on_call)
        self._min_slot_mb = min_slot_mb
        self._cache_dir = cache_dir
        self._extension = extension
        self.budget = budget if budget is not None else MemoryBudget(NO_BUDGET)
        self._max_result_pixels = max_result_pixels
        self._slots_mb = 0
        self._executor: Workers | None = None
        #: Set when close() starts: decodes stop at their next read.
        self._cancel = threading.Event()
        #: Jobs running at once, on the workers or on callers' threads (decode_and_call_sync).
        self._running = Permits(pool.workers)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Compile or load every module, validate it, then start the ticker and the workers.

        Raises FunctionLoadError naming the first function whose module is unusable.
        """
        if self._engine is not None:
            raise RuntimeError("the pool is already started")
        engine = WasmEngine(self._cache_dir, self._slots())
        self._engine = engine
        self._cancel.clear()
        # Validation instantiates frame-v1 modules, which needs epochs advancing: start the ticker first.
        self._ticker.start(engine, tick_for(fn.timeout_ms for fn in self._table.functions.values()))
        try:
            with self._ticker.busy():
                runners = load_runners(engine, self._table.functions, self._ticker.tick * 1000, self._extension)
            self._table = FunctionTable(self._table.functions, runners)
            self._files.open()
            self._executor = Workers(self._settings.workers, "edged-wasm")
        except BaseException:
            self._ticker.stop()
            self._engine = None
            raise
        log.info("function pool ready: %d functions, %d workers, queue %d, %s instance allocator",
                 len(runners), self._settings.workers, self._settings.queue, self.allocator)

    def _slots(self) -> InstanceSlots:
        """One instance slot per worker (a Store lives only while its call runs), plus one for start-up checks
        and one spare; each as large as the largest memory_mb."""
        largest = max([fn.memory_mb for fn in self._table.functions.values()] + [self._min_slot_mb])
        self._slots_mb = largest
        return InstanceSlots(count=self._settings.workers + 2, max_memory_bytes=largest * MiB,
                             keep_resident_bytes=self._settings.keep_resident_mb * MiB)

    @property
    def extension(self) -> HostExtension | None:
        """The imports linked for the current table's functions."""
        return self._extension

    def swap(self, functions: Mapping[str, FunctionSettings], extension: HostExtension | None,
             on_idle: Callable[[], None] | None = None) -> None:
        """Load ``functions`` (with ``extension`` linked) on the running engine, then make them the table
        new calls use; calls in flight finish on the old one, whose ``on_idle`` runs after its last call.

        Raises FunctionLoadError (nothing is swapped) when a module is unusable or a function needs more
        memory than the running instance slots hold (that needs a restart)."""
        engine = self._engine
        if engine is None:
            raise RuntimeError("the pool is not running")
        with self._ticker.busy():
            # The running tick (a call in flight counts in it); a new shorter timeout is only rounded coarser.
            runners = load_runners(engine, functions, self._ticker.tick * 1000, extension,
                                   self._slots_mb if engine.pooling else None)
        self._extension = extension
        with self._lock:
            old, self._table = self._table, FunctionTable(functions, runners)
            old.retire(on_idle)
            for name in functions:
                self._stats.setdefault(name, FunctionStats())
        old.idle_if_retired()

    def compile(self, wasm: bytes, label: str) -> None:
        """Validate and compile ``wasm`` on the running engine, into its compiled-module cache (a later
        swap loads it from there). Raises ValueError saying why when it does not validate or compile."""
        engine = self._engine
        if engine is None:
            raise RuntimeError("the pool is not running")
        try:
            engine.load_bytes(wasm, label)
        except wasmtime.WasmtimeError as exc:
            raise ValueError(f"{label} is not a valid module: {trap_summary(str(exc))}") from exc

    def close(self) -> None:
        """Stop admitting, cancel decodes, let admitted calls finish (each is bounded by its timeout), stop
        the ticker."""
        self._cancel.set()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            # The ticker must outlive the workers: it is what interrupts a runaway guest.
            executor.shutdown()
        with self._settled:
            # Jobs running on callers' threads (decode_and_call_sync) need the ticker and scratch too.
            self._settled.wait_for(lambda: self._admitted == 0)
        self._ticker.stop()
        self._files.close()  # after the ticker: it checks the files through their handles
        self._table = FunctionTable(self._table.functions, {})
        self._engine = None

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

    def _admit(self, table: FunctionTable) -> Workers:
        """Count one more admitted job on ``table`` (raise Overloaded when full); the caller must
        ``_release`` it."""
        with self._lock:
            executor = self._executor
            if executor is None:
                raise Overloaded("the function pool is not running")
            if self._admitted >= self._capacity:
                self._overloaded += 1
                raise Overloaded(f"all {self._settings.workers} workers are busy and {self._settings.queue} "
                                 f"calls are waiting")
            self._admitted += 1
            table.users += 1
        return executor

    def _permitted(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` holding one of the ``workers`` permits (shared with callers that run jobs themselves)."""
        with self._running:
            self._ticker.hold()
            with self._lock:
                self._executing += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._executing -= 1
                self._ticker.let_go()

    def _submit(self, table: FunctionTable, fn: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        """Admit ``fn(*args)`` and queue it for a worker; await the result (on the calling loop)."""
        executor = self._admit(table)
        # on_end runs on completion and on cancellation (a caller gave up before a worker took the call).
        job = Job(self._permitted, (fn, *args), lambda: self._release(table))
        try:
            executor.submit(job)
        except RuntimeError as exc:  # shut down between the check and the submit
            self._release(table)
            raise Overloaded("the function pool is shutting down") from exc
        return job.future

    def _release(self, table: FunctionTable) -> None:
        with self._lock:
            self._admitted -= 1
            table.users -= 1
            if self._admitted == 0:
                self._settled.notify_all()
        table.idle_if_retired()

    # -- calls ---------------------------------------------------------------------------------------

    def _runner(self, table: FunctionTable, name: str) -> FunctionRunner:
        runner = table.runners.get(name)
        if runner is None:
            if name in table.functions:
                raise Overloaded("the function pool is not running")
            raise UnknownFunction(f"no function named {name!r}")
        return runner

    async def call(self, name: str, frame: Frame) -> CallResult:
        """Run function ``name`` on ``frame``; raise UnknownFunction, Overloaded or a FunctionError."""
        table = self._table
        return await self._submit(table, self._run, self._runner(table, name), frame, None)

    async def decode(self, data: bytes, max_pixels: int, timeout_ms: int | None = None) -> Frame:
        """``edged.frames.decode`` on a worker, within ``timeout_ms`` (from when it starts) and the memory
        budget while it runs; counts against the same bound as calls. The frame is the caller's."""
        job = self._submit(self._table, self._decode_now, data, max_pixels, timeout_ms, FrameHold(self.budget), True,
                           FULL_FRAME)
        frame, _started = await job
        return frame

    async def decode_and_call(self, data: bytes, max_pixels: int, name: str, *, digests: bool = False,
                              sha256: str | None = None) -> tuple[Frame, CallResult | FunctionError]:
        """Decode ``data`` and run ``name`` on it in one worker hand-off (one admission slot).

        With ``digests`` the frame's ``sha256`` is ``sha256``, else hashed on the worker, and an encoded
        result's too (off the event loop: ~2.5 us per KB here). Raises ImageError for an unacceptable image,
        UnknownFunction or Overloaded; a failed call is returned, not raised, since the frame it ran on is
        wanted either way.
        """
        table = self._table
        job = self._submit(table, self._decode_and_run, self._runner(table, name), data, max_pixels, digests,
                           sha256)
        return await job

    async def decode_and_call_each(self, data: bytes, max_pixels: int, names: Sequence[str], *, digests: bool = False,
                                   sha256: str | None = None) -> tuple[Frame, list[CallResult | FunctionError]]:
        """Decode ``data`` once and run every function in ``names`` on it, at once on several workers.

        The frame is decoded at the largest size one of them needs (edged.wasm.need) and stays reserved
        until its last call is over. Digests and errors as in ``decode_and_call``.
        """
        if len(names) == 1:
            frame, single = await self.decode_and_call(data, max_pixels, names[0], digests=digests, sha256=sha256)
            return frame, [single]
        table = self._table
        runners = [self._runner(table, name) for name in names]
        hold = FrameHold(self.budget)
        timeout_ms = min(r.settings.timeout_ms for r in runners)
        frame, started = await self._submit(table, self._decode_now, data, max_pixels, timeout_ms, hold, False,
                                            frame_plan((r.settings, r.need) for r in runners), digests, sha256)
        try:
            jobs = [self._submit(table, self._run, r, frame, started, digests) for r in runners]
        except BaseException:
            hold.release()
            raise
        settled = await asyncio.gather(*jobs, return_exceptions=True)
        hold.release()  # every call is over
        results: list[CallResult | FunctionError] = []
        for outcome in settled:
            if isinstance(outcome, CallResult | FunctionError):
                results.append(outcome)
            else:
                raise outcome
        return frame, results

    def decode_and_call_sync(self, data: bytes, max_pixels: int, name: str) -> CallResult:
        """Decode and call on the calling thread (``edged invoke``): no hand-off to a worker and back.

        Admitted like any other job and holding one of the ``workers`` permits; the thread gets its own
        linker and scratch files (meant for a few long-lived threads). Raises ImageError,
        UnknownFunction, Overloaded or the call's FunctionError.
        """
        table = self._table
        runner = self._runner(table, name)
        self._admit(table)
        try:
            _frame, outcome = self._permitted(self._decode_and_run, runner, data, max_pixels)
        finally:
            self._release(table)
        if isinstance(outcome, FunctionError):
            raise outcome
        return outcome

    def _decode_now(self, data: bytes, max_pixels: int, timeout_ms: int | None, hold: FrameHold,
                    release: bool, plan: FramePlan, digest: bool = False,
                    sha256: str | None = None, keep: bool = False) -> tuple[Frame, float]:
        """Decode within ``timeout_ms`` from now, as ``plan`` says; return the frame and when this started.
        ``hold`` keeps the pixels reserved unless ``release`` (released on any error). With ``digest`` the
        frame carries ``sha256`` (hashed here when not given); with ``keep`` its picture, for the one runner
        that packs it into its sandbox (edged.rgb8)."""
        started = time.monotonic()
        deadline = None if timeout_ms is None else started + timeout_ms / 1000
        try:
            frame = decode(data, max_pixels=max_pixels, deadline=deadline, cancel=self._cancel, admit=hold.admit,
                           need=plan.need, resize_to=plan.resize_to, full=plan.full, keep=keep)
        except BaseException:
            hold.release()
            raise
        if release:
            hold.release()
        else:
            hold.decoded(frame)
        if digest:
            frame = dataclasses.replace(frame, sha256=sha256 or hashlib.sha256(data).hexdigest())
        return frame, started

    def _decode_and_run(self, runner: FunctionRunner, data: bytes, max_pixels: int, digest: bool = False,
                        sha256: str | None = None) -> tuple[Frame, CallResult | FunctionError]:
        hold = FrameHold(self.budget)
        frame, started = self._decode_now(data, max_pixels, runner.settings.timeout_ms, hold, False,
                                          frame_plan([(runner.settings, runner.need)]), digest, sha256,
                                          runner.packs_pictures)
        try:
            return frame, self._run(runner, frame, started, digest)
        except FunctionError as exc:
            return frame, exc
        finally:
            hold.release()

    def _run(self, runner: FunctionRunner, frame: Frame, started: float | None, digest: bool = False) -> CallResult:
        """On a worker thread: one call, counted and logged whatever happens to it. Its deadline counts from
        ``started`` (``time.monotonic()`` when its frame's decode started), else from now. With ``digest``
        an encoded result carries its ``sha256``."""
        began = time.perf_counter()
        deadline = (time.monotonic() if started is None else started) + runner.settings.timeout_ms / 1000
        memory = CallMemory(self.budget, runner.name, runner.settings)
        try:
            memory.reserve_guest()
            result = runner.call(frame_for(runner.settings, frame), self._files.get(check=runner.uses_wasi),
                                 deadline=deadline, memory=memory,
                                 max_result_pixels=self._max_result_pixels)
        except FunctionError as exc:
            log.warning("function %s failed: %s: %s", runner.name, exc.code, exc.detail,
                        extra={"FUNCTION": runner.name, "ERROR_CODE": exc.code})
            self._record(runner, exc.code, time.perf_counter() - began)
            raise
        except Overloaded:
            with self._lock:
                self._overloaded += 1
            raise
        except Exception:
            log.exception("function %s: internal error", runner.name, extra={"FUNCTION": runner.name})
            self._record(runner, "internal", time.perf_counter() - began)
            raise
        finally:
            memory.release()
        self._record(runner, "ok", time.perf_counter() - began)
        if digest and result.json is None:
            result = dataclasses.replace(result, sha256=hashlib.sha256(result.body).hexdigest())
        return result
