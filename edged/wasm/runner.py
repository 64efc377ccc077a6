"""One function and its calls: the lifecycle every ABI shares, with a subclass per ABI.

``FunctionRunner`` holds what does not depend on the calling convention: linking (the ``edged`` imports
and any extension's), the limited Store, the WASI context, validation at startup, the fresh instance per
call with its traps gathered, and the mapping of what happened to a result or a typed error. A subclass
(``edged.wasm.reactor.FrameRunner``, ``edged.wasm.command.CommandRunner``) says how its ABI checks a
module, hands the input over, runs it and finds the result, as aiohttp's ``BaseRunner`` leaves a few
steps to ``AppRunner`` and ``ServerRunner``.

Everything wasmtime happens on the thread that calls ``call``: the Store, the WASI context and the
instance are created, used and dropped there. Linkers and their ``InstancePre`` are built once per worker
thread and function. Failures are mapped only after the Store is gone, so neither a returned error nor
its traceback keeps guest memory alive.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from typing import ClassVar

import wasmtime

from edged.encode import encode_cost, encode_pixels
from edged.errors import FunctionError, FunctionFailed, FunctionTrap, MemoryLimit, Overloaded
from edged.frames import Frame, FrameNeed
from edged.settings import FunctionSettings
from edged.wasm.abi import Output, ResultKind
from edged.wasm.admission import CallMemory
from edged.wasm.host.context import CallContext, activate
from edged.wasm.host.link import HostExtension, link_edged
from edged.wasm.outcome import Attempt, CallResult, FunctionLoadError, trap_failure, trap_summary
from edged.wasm.rawcall import export
from edged.wasm.scratch import Scratch

__all__ = ["FunctionRunner", "signature"]

MiB = 1024 * 1024

#: The import modules ``Linker.define_wasi`` defines (preview 1 and its older name).
_WASI_MODULES = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})

#: wasmtime's message when every slot of the pooling allocator is in use.
_SLOTS_EXHAUSTED = "maximum concurrent"


def signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A function type as (params, results), each a tuple of type names: what validation compares."""
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


class FunctionRunner(ABC):
    """A loaded function: settings, compiled module and the per-thread linkers that instantiate it."""

    #: The ``abi`` setting this runner speaks.
    abi: ClassVar[str]
    #: Whether its calls take a frame's kept picture (``decode(keep=True)``) and pack it themselves.
    packs_pictures: bool = False

    def __init__(self, name: str, settings: FunctionSettings, module: wasmtime.Module, engine: wasmtime.Engine,
                 tick_ms: float, extension: HostExtension | None) -> None:
        if settings.abi != self.abi:
            raise ValueError(f"function {name} speaks {settings.abi}, not {self.abi}")
        self.name = name
        self.settings = settings
        self.module = module
        self.engine = engine
        self.logger = logging.getLogger(f"edged.function.{name}")
        self._extension = extension
        self._memory_limit = settings.memory_mb * MiB
        self._tick_ms = tick_ms
        self._ticks = math.ceil(settings.timeout_ms / tick_ms) + 1
        self._local = threading.local()
        #: The smallest frame it works as well from (edged.wasm.need); None: the full size.
        self.need: FrameNeed = None
        # A module that imports nothing from WASI never reads its context: its calls skip making one (the
        # largest per-call cost after instantiation; the stderr file would be opened for nothing).
        self._uses_wasi = any(imp.module in _WASI_MODULES for imp in module.imports)
        #: Calls trust the export signatures (edged.wasm.rawcall): only a validated runner may run.
        self._validated = False

    @property
    def uses_wasi(self) -> bool:
        """Whether its calls get a WASI context (and so may touch the worker's stdio files)."""
        return self._uses_wasi

    # -- what each ABI says --------------------------------------------------------------------------

    @abstractmethod
    def _export_problem(self, exports: dict[str, object]) -> str | None:
        """Why the module's exports (name -> type) do not speak this ABI, or None."""

    @abstractmethod
    def _check_loaded(self, pre: wasmtime.InstancePre) -> None:
        """The last check at load time (may instantiate once); raises FunctionLoadError."""

    @abstractmethod
    def _stdio(self, wasi: wasmtime.WasiConfig, scratch: Scratch) -> None:
        """Point the call's WASI stdio at the worker's scratch files, as far as the ABI uses them."""

    @abstractmethod
    def _run(self, store: wasmtime.Store, instance: wasmtime.Instance, memory: wasmtime.Memory | None,
             frame: Frame, attempt: Attempt) -> None:
        """Hand ``frame`` to the fresh instance and run it; record the outcome in ``attempt``."""

    @abstractmethod
    def _output(self, ctx: CallContext, scratch: Scratch) -> Output:
        """The result of a call that did not fail (raise BadOutput when there is none)."""

    @abstractmethod
    def _refused(self, ctx: CallContext, scratch: Scratch) -> FunctionError | None:
        """The error a result the guest offered already earned (over a limit, refused), whatever happened
        after it (a trap, a timeout, an exit status)."""

    @abstractmethod
    def _failure_detail(self, status: int, ctx: CallContext, stderr: str, scratch: Scratch) -> str:
        """What is known about a call that ended with a non-zero status."""

    # -- setup ---------------------------------------------------------------------------------------

    def _linker(self) -> wasmtime.Linker:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        link_edged(linker)
        # The hook for per-function imports: the WASI-NN host links wasi_ephemeral_nn here (it decides
        # from the function's settings, e.g. its `models` grant, whether to define anything).
        if self._extension is not None:
            self._extension.link(linker, self.name, self.settings)
        return linker

    def _instance_pre(self) -> wasmtime.InstancePre:
        pre: wasmtime.InstancePre | None = getattr(self._local, "pre", None)
        if pre is None:
            linker = self._linker()
            pre = linker.instantiate_pre(self.module)
            self._local.linker = linker
            self._local.pre = pre
        return pre

    def _store(self, scratch: Scratch | None, ticks: int | None = None) -> wasmtime.Store:
        """A Store with the call's limits and a WASI context that inherits nothing: argv is [name], no
        environment, preopens as granted, stdio as the ABI needs (none at load time); no context at all
        for a module without WASI imports. ``ticks``: epochs until the guest is interrupted (default: its
        whole timeout)."""
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self._memory_limit)
        store.set_epoch_deadline(self._ticks if ticks is None else ticks)
        wasi = self._wasi_config(scratch)
        if wasi is not None:
            store.set_wasi(wasi)
        return store

    def _wasi_config(self, scratch: Scratch | None) -> wasmtime.WasiConfig | None:
        """The call's WASI context (see ``_store``), or None for a module without WASI imports."""
        if not self._uses_wasi:
            return None
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self.name]
        for preopen in self.settings.preopens:
            wasi.preopen_dir(str(preopen.host), preopen.guest, fs_mutable=preopen.writable)
        if scratch is not None:
            scratch.arm()
            self._stdio(wasi, scratch)
        return wasi

    def validate(self) -> None:
        """Check preopens, exports and imports, then the ABI's own check. Needs the pool's epoch ticker.

        Raises FunctionLoadError.
        """
        for preopen in self.settings.preopens:
            if not preopen.host.is_dir():
                raise FunctionLoadError(self.name, f"preopen {preopen.host} is not a directory")
        problem = self._export_problem({e.name: e.type for e in self.module.exports})
        if problem is None and self._extension is not None:
            problem = self._extension.check(self.name, self.settings, self.module)
        if problem is not None:
            raise FunctionLoadError(self.name, problem)
        try:
            pre = self._linker().instantiate_pre(self.module)
        except wasmtime.WasmtimeError as exc:
            raise FunctionLoadError(self.name, f"cannot link: {trap_summary(str(exc))}") from exc
        self._check_loaded(pre)
        self._validated = True

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, frame: Frame, scratch: Scratch, *, deadline: float | None = None,
             memory: CallMemory | None = None, max_result_pixels: int = 0) -> CallResult:
        """Run one call on this thread; raise a FunctionError subclass when it fails.

        ``deadline`` (``time.monotonic()``; default: its timeout from now) bounds the guest and the encode
        of its result; ``memory`` holds the call's share of the budget (Overloaded when a result does not
        fit in it now); ``max_result_pixels`` bounds a frame result (0: no bound).
        """
        if not self._validated:
            raise RuntimeError(f"function {self.name} was not validated")
        started = time.perf_counter()
        if deadline is None:
            deadline = time.monotonic() + self.settings.timeout_ms / 1000
        ticks = max(1, math.ceil((deadline - time.monotonic()) * 1000 / self._tick_ms) + 1)
        ctx = CallContext(self.name, self.settings, deadline, self.logger, memory=memory,
                          max_result_pixels=max_result_pixels)
        try:
            attempt = self._attempt(ctx, frame, scratch, ticks)
        finally:
            if self._extension is not None:
                # E.g. WASI-NN gives back the interpreters this call borrowed.
                self._extension.end_call(ctx)
        # The store is gone, and with it the guest's memory: map what happened, then encode.
        if memory is not None:
            memory.guest_gone()
        try:
            stderr = scratch.log_stderr(self.logger) if self._uses_wasi else ""  # none without WASI
            if memory is not None and memory.refused is not None:
                raise Overloaded(memory.refused)
            failure = self._refused(ctx, scratch) or self._failure(attempt, ctx, stderr, scratch)
            if failure is not None:
                raise failure from (attempt.trap or attempt.error)
            output = self._output(ctx, scratch)
        finally:
            if self._uses_wasi:  # without a WASI context the call could touch none of the files
                scratch.reset()
        encode_started = time.perf_counter()
        content_type, body = output.content_type, output.body
        if output.kind == ResultKind.FRAME:
            if memory is not None:
                memory.reserve_encode(encode_cost(output.width, output.height, output.channels))
            content_type, body = encode_pixels(output.width, output.height, output.channels, output.body,
                                               frame.format_code, deadline)
        finished = time.perf_counter()
        return CallResult(
            function=self.name, content_type=content_type, body=body, json=output.json,
            duration_ms=(finished - started) * 1000, instantiate_ms=attempt.instantiate_ms,
            run_ms=attempt.run_ms, encode_ms=(finished - encode_started) * 1000,
        )

    def _attempt(self, ctx: CallContext, frame: Frame, scratch: Scratch, ticks: int) -> Attempt:
        """A fresh store and instance; ``_run`` does the ABI's part; traps are gathered, never raised."""
        attempt = Attempt()
        t0 = time.perf_counter()
        store = self._store(scratch, ticks)
        memory: wasmtime.Memory | None = None
        run_started: float | None = None
        with activate(ctx):
            try:
                instance = self._instance_pre().instantiate(store)
                found = export(store, instance, "memory")
                memory = found if isinstance(found, wasmtime.Memory) else None
                run_started = time.perf_counter()
                attempt.instantiate_ms = (run_started - t0) * 1000
                self._run(store, instance, memory, frame, attempt)
            except wasmtime.ExitTrap as exc:
                # proc_exit: its status stands in for the command's exit status or edged_run's result.
                attempt.status = exc.code
            except wasmtime.Trap as exc:
                attempt.trap = exc.with_traceback(None)
                attempt.memory_bytes = memory.data_len(store) if memory is not None else 0
            except wasmtime.WasmtimeError as exc:
                attempt.error = exc.with_traceback(None)
            finally:
                # Free the instance's slot now, not whenever the garbage collector gets to the Store.
                store.close()
            if run_started is not None:
                attempt.run_ms = (time.perf_counter() - run_started) * 1000
        return attempt

    def _failure(self, attempt: Attempt, ctx: CallContext, stderr: str, scratch: Scratch) -> FunctionError | None:
        s = self.settings
        if attempt.trap is not None:
            return trap_failure(attempt, stderr, s, self._memory_limit)
        if attempt.error is not None:
            summary = trap_summary(str(attempt.error))
            if _SLOTS_EXHAUSTED in summary:
                # Cannot happen while every Store is closed when its call ends (the pool has a slot per
                # worker and spares); if it does, say so rather than blame the function.
                return FunctionFailed(f"no free instance slot in the pool (internal error): {summary}")
            if "exceeds memory limits" in summary:
                return MemoryLimit(f"needs more than its memory limit of {s.memory_mb} MiB: {summary}")
            return FunctionTrap(summary)
        if attempt.alloc_failed is not None:
            return MemoryLimit(f"edged_alloc({attempt.alloc_failed}) returned 0 (memory limit {s.memory_mb} MiB)")
        if attempt.bad_pointer is not None:
            return FunctionFailed(attempt.bad_pointer)
        if attempt.status:
            return FunctionFailed(self._failure_detail(attempt.status, ctx, stderr, scratch))
        return None
