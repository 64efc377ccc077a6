"""The function pool's lifecycle and admission: engine, function table, workers, ticker; admit, run, release.

``edged.wasm.pool.FunctionPool`` builds the calls (decode, call, both in one hand-off) on these. Admission is
bounded twice: at most ``workers + queue`` calls and decodes are admitted (running or waiting), and what they
hold fits in the memory budget (edged.wasm.admission); past either, Overloaded is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import wasmtime

from edged.budget import MemoryBudget
from edged.errors import Overloaded, UnknownFunction
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.admission import DEFAULT_MAX_RESULT_PIXELS, NO_BUDGET
from edged.wasm.engine import InstanceSlots, WasmEngine
from edged.wasm.host.link import HostExtension
from edged.wasm.outcome import trap_summary
from edged.wasm.poolstate import OnCall, PoolState
from edged.wasm.runner import FunctionRunner
from edged.wasm.stats import FunctionStats
from edged.wasm.table import FunctionTable, load_runners
from edged.wasm.ticker import tick_for
from edged.wasm.workers import Job, Permits, Workers

__all__ = ["PoolCore"]

log = logging.getLogger("edged.wasm.pool")

MiB = 1024 * 1024

_T = TypeVar("_T")


class PoolCore(PoolState):
    """Start, swap and close the pool; admit a job, run it holding a worker permit, release it."""

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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
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
