"""Floors for the no-op table of bench/pool_bench.py: the same work done by the bare dependency.

* ``RawFloor``: what the C API needs for one frame-v1 no-op call, on the same Engine (pooling allocator)
  and compiled module as the pool's: a fresh Store, its memory limit and epoch deadline, instantiate,
  the three exports, ``edged_alloc``, the input written, ``edged_run`` (whose ``edged.output`` import only
  copies the two result bytes out), the Store deleted. Through edged.wasm.rawstore's primitives, with
  nothing of edged's call around them (no context, budget, checks, result object).
* ``PublicFloor``: the same steps through wasmtime-py's public API.
* ``handoff_floors``: an event loop handing an empty job to a waiting thread and getting the result back,
  as edged.wasm.workers does (``SimpleQueue`` + ``call_soon_threadsafe``) and as ``run_in_executor`` does.

Each floor is timed one call at a time; where a loop is involved each call is awaited inside one running
coroutine (``time_awaits``), as the daemon awaits the pool and as the pool's whole-call figure is timed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import wasmtime

from edged.wasm import rawstore
from edged.wasm.rawcall import define_i32

__all__ = ["Handoff", "PublicFloor", "RawFloor", "time_awaits", "time_each"]

HEADER = 32
MEMORY_LIMIT = 64 * 1024 * 1024
TICKS = 1000


def time_each(fn: Callable[[], object], n: int) -> list[float]:
    """``n`` timed calls of ``fn`` (ms each), after one untimed."""
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def time_awaits(loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """``n`` timed awaits of ``make()`` (ms each), after one untimed, all inside one coroutine on ``loop``:
    how the daemon awaits the pool, without ``run_until_complete``'s start and stop of the loop per call
    (~20 us here, which no request pays)."""
    async def run() -> list[float]:
        await make()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await make()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    return loop.run_until_complete(run())


class RawFloor:
    """One no-op call per ``__call__`` on raw handles (rawstore.RawCall), nothing of edged around it."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, payload: bytes) -> None:
        self.result = b""
        linker = wasmtime.Linker(engine)
        define_i32(linker, "edged", "output", 3, self._output)
        self.pre = linker.instantiate_pre(module)
        found = rawstore.indexes(module, ("memory", "edged_alloc", "edged_run"))
        self.memory, self.alloc, self.run = found["memory"], found["edged_alloc"], found["edged_run"]
        self.raw = rawstore.RawCall(engine, self.pre, len(module.exports))
        self.data = bytes(HEADER) + payload

    def _output(self, caller: wasmtime.Caller, ptr: int, length: int, kind: int) -> int:
        self.result = self.raw.memory(caller).read(ptr, length)
        return 0

    def __call__(self) -> None:
        raw, data = self.raw, self.data
        raw.open(MEMORY_LIMIT, TICKS, None)
        try:
            raw.instantiate(self.memory, (self.alloc, self.run))
            ptr = raw.call(self.alloc, len(data))
            raw.memory().write(ptr, data)
            if raw.call(self.run, ptr, len(data)) != 0:
                raise RuntimeError("edged_run failed")
        finally:
            raw.close()


class PublicFloor:
    """The same call through wasmtime-py's public API (Store, InstancePre, exports, Func, Memory)."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, payload: bytes) -> None:
        self.engine = engine
        self.result = b""
        i32 = wasmtime.ValType.i32
        linker = wasmtime.Linker(engine)
        linker.define_func("edged", "output", wasmtime.FuncType([i32(), i32(), i32()], [i32()]), self._output,
                           access_caller=True)
        self.pre = linker.instantiate_pre(module)
        self.data = bytes(HEADER) + payload

    def _output(self, caller: wasmtime.Caller, ptr: int, length: int, kind: int) -> int:
        memory = caller.get("memory")
        assert isinstance(memory, wasmtime.Memory)
        self.result = memory.read(caller, ptr, ptr + length)
        return 0

    def __call__(self) -> None:
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=MEMORY_LIMIT)
        store.set_epoch_deadline(TICKS)
        try:
            exports = self.pre.instantiate(store).exports(store)
            memory, alloc, run = exports["memory"], exports["edged_alloc"], exports["edged_run"]
            assert isinstance(memory, wasmtime.Memory)
            assert isinstance(alloc, wasmtime.Func)
            assert isinstance(run, wasmtime.Func)
            ptr = alloc(store, len(self.data))
            memory.write(store, self.data, ptr)
            if run(store, ptr, len(self.data)) != 0:
                raise RuntimeError("edged_run failed")
        finally:
            store.close()


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Handoff:
    """An empty job handed from an event loop to one waiting thread and back, both ways the pool could."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="floor-handoff", daemon=True)
        self._thread.start()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="floor-executor")

    def _work(self) -> None:
        while (future := self._jobs.get()) is not None:
            self.loop.call_soon_threadsafe(_set, future)

    async def simple_queue(self) -> None:
        """One round trip: SimpleQueue to the thread, call_soon_threadsafe back (await it on ``self.loop``)."""
        future = self.loop.create_future()
        self._jobs.put(future)
        await future

    async def run_in_executor(self) -> None:
        """One round trip through ``loop.run_in_executor`` (ThreadPoolExecutor, one thread)."""
        await self.loop.run_in_executor(self._executor, _nothing)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        self._executor.shutdown()
        self.loop.close()


def _nothing() -> Any:
    return None
