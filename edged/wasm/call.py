"""One function and its calls: validation at startup, then a fresh, limited instance per call.

Everything wasmtime happens on the thread that calls ``FunctionRunner.call``: the Store, the WASI
context and the instance are created, used and dropped there. Linkers (with the ``edged`` imports and
any extension's imports) and their ``InstancePre`` are built once per worker thread and function.
Failures are mapped to the typed errors of ``edged.errors`` only after the Store is gone, so neither a
returned error nor its traceback keeps guest memory alive.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime

from edged.errors import BadOutput, FunctionError, FunctionFailed, FunctionTimeout, FunctionTrap, MemoryLimit
from edged.frames import Frame, encode_pixels
from edged.settings import ConfigError, FunctionSettings
from edged.wasm.abi import (
    ABI_VERSION,
    HEADER_SIZE,
    KIND_FRAME,
    KIND_RAW,
    GuestMemory,
    GuestMemoryError,
    Output,
    OutputRejected,
    ResultKind,
    classify_stdout,
    pack_header,
    u32,
)
from edged.wasm.host import HostExtension, link_edged
from edged.wasm.host.context import CallContext, activate
from edged.wasm.rawcall import call_i32, export
from edged.wasm.scratch import Scratch

__all__ = ["CallResult", "FunctionLoadError", "FunctionRunner", "trap_summary"]

MiB = 1024 * 1024
WASM_PAGE = 64 * 1024
#: Text in a guest's stderr that means its allocator gave up (Rust's alloc error handler prints it).
_OOM_MARKERS = ("memory allocation of",)

#: wasmtime's message when every slot of the pooling allocator is in use.
_SLOTS_EXHAUSTED = "maximum concurrent"

_EXPECTED_FRAME_EXPORTS = {
    "edged_abi_version": ((), ("i32",)),
    "edged_alloc": (("i32",), ("i32",)),
    "edged_run": (("i32", "i32"), ("i32",)),
}


@dataclass(frozen=True, slots=True)
class CallResult:
    """A successful call. ``json`` is the parsed object for JSON results, else None."""

    function: str
    content_type: str
    body: bytes
    json: dict[str, Any] | None
    duration_ms: float
    instantiate_ms: float
    run_ms: float
    encode_ms: float = 0.0


class FunctionLoadError(ConfigError):
    """A function's module is missing, does not compile, or does not speak its ABI."""

    def __init__(self, function: str, detail: str) -> None:
        super().__init__([(f"functions.{function}.module", detail)])
        self.function = function
        self.detail = detail


@dataclass(slots=True)
class _Attempt:
    """What happened inside the store, gathered while it was alive."""

    instantiate_ms: float = 0.0
    run_ms: float = 0.0
    status: int | None = None
    trap: wasmtime.Trap | None = None
    error: wasmtime.WasmtimeError | None = None
    memory_bytes: int = 0
    alloc_failed: int | None = None
    bad_pointer: str | None = None


#: The ABI-specific part of a call: runs with the fresh instance, its store and its exported memory.
_Body = Callable[[wasmtime.Store, wasmtime.Instance, "wasmtime.Memory | None", _Attempt], None]


def trap_summary(message: str) -> str:
    """The useful line of a wasmtime trap/error message (its first line is only 'error while executing')."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1:]
        if after:
            return after[0].removeprefix("0: ")
    return lines[0] if lines else "unknown trap"


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


class FunctionRunner:
    """A loaded function: settings, compiled module and the per-thread linkers that instantiate it."""

    def __init__(self, name: str, settings: FunctionSettings, module: wasmtime.Module, engine: wasmtime.Engine,
                 tick_ms: float, extension: HostExtension | None) -> None:
        self.name = name
        self.settings = settings
        self.module = module
        self.engine = engine
        self.logger = logging.getLogger(f"edged.function.{name}")
        self._extension = extension
        self._memory_limit = settings.memory_mb * MiB
        self._ticks = math.ceil(settings.timeout_ms / tick_ms) + 1
        self._local = threading.local()
        self._has_initialize = any(e.name == "_initialize" for e in module.exports)
        #: Calls trust the export signatures (edged.wasm.rawcall): only a validated runner may run.
        self._validated = False

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

    def _store(self) -> wasmtime.Store:
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self._memory_limit)
        store.set_epoch_deadline(self._ticks)
        return store

    def _fresh_instance(self, store: wasmtime.Store) -> tuple[wasmtime.Instance, wasmtime.Memory | None]:
        """Instantiate into ``store``; return the instance and its exported memory, if any."""
        instance = self._instance_pre().instantiate(store)
        found = export(store, instance, "memory")
        return instance, found if isinstance(found, wasmtime.Memory) else None

    def _initialize(self, store: wasmtime.Store, instance: wasmtime.Instance) -> None:
        """Run a reactor's ``_initialize`` when it has one (checked to be () -> () by validate)."""
        if self._has_initialize:
            init = export(store, instance, "_initialize")
            assert isinstance(init, wasmtime.Func)
            call_i32(store, init, results=0)

    def _wasi(self, scratch: Scratch | None) -> wasmtime.WasiConfig:
        """Nothing inherited: argv is [name], no environment, preopens as granted, stdio as the ABI needs."""
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self.name]
        for preopen in self.settings.preopens:
            wasi.preopen_dir(str(preopen.host), preopen.guest, fs_mutable=preopen.writable)
        if scratch is not None:
            if self.settings.abi == "wasi-command":
                wasi.stdin_file = str(scratch.stdin)
                wasi.stdout_file = str(scratch.stdout)
            wasi.stderr_file = str(scratch.stderr)
        return wasi

    def validate(self) -> None:
        """Check exports, imports and preopens, and ask a frame-v1 module its ABI version (instantiates once).

        Needs the pool's epoch ticker running. Raises FunctionLoadError.
        """
        for preopen in self.settings.preopens:
            if not preopen.host.is_dir():
                raise FunctionLoadError(self.name, f"preopen {preopen.host} is not a directory")
        exports = {e.name: e.type for e in self.module.exports}
        if self.settings.abi == "wasi-command":
            start = exports.get("_start")
            if not isinstance(start, wasmtime.FuncType) or _signature(start) != ((), ()):
                raise FunctionLoadError(self.name, "a wasi-command module must export _start: () -> ()")
        else:
            if not isinstance(exports.get("memory"), wasmtime.MemoryType):
                raise FunctionLoadError(self.name, "a frame-v1 module must export its memory as 'memory'")
            init = exports.get("_initialize")
            if init is not None and (not isinstance(init, wasmtime.FuncType) or _signature(init) != ((), ())):
                raise FunctionLoadError(self.name, "a frame-v1 module's _initialize, if any, must be () -> ()")
            for name, signature in _EXPECTED_FRAME_EXPORTS.items():
                ty = exports.get(name)
                if not isinstance(ty, wasmtime.FuncType) or _signature(ty) != signature:
                    params, results = signature
                    raise FunctionLoadError(
                        self.name, f"a frame-v1 module must export {name}: ({', '.join(params)}) -> "
                                   f"({', '.join(results)})")
        if self._extension is not None:
            problem = self._extension.check(self.name, self.settings, self.module)
            if problem is not None:
                raise FunctionLoadError(self.name, problem)
        try:
            pre = self._linker().instantiate_pre(self.module)
        except wasmtime.WasmtimeError as exc:
            raise FunctionLoadError(self.name, f"cannot link: {trap_summary(str(exc))}") from exc
        if self.settings.abi == "frame-v1":
            self._check_abi_version(pre)
        else:
            self._check_instantiates(pre)
        self._validated = True

    def _check_instantiates(self, pre: wasmtime.InstancePre) -> None:
        """Instantiate once (not running _start), so a module the instance pool cannot hold (more memories
        or tables, or a larger table, than a slot has) fails at load time, not on every call."""
        store = self._store()
        store.set_wasi(self._wasi(None))
        try:
            pre.instantiate(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise FunctionLoadError(self.name, f"cannot be instantiated: {trap_summary(str(exc))}") from None
        finally:
            store.close()

    def _check_abi_version(self, pre: wasmtime.InstancePre) -> None:
        store = self._store()
        store.set_wasi(self._wasi(None))
        try:
            instance = pre.instantiate(store)
            self._initialize(store, instance)
            version_fn = export(store, instance, "edged_abi_version")
            assert isinstance(version_fn, wasmtime.Func)
            version = call_i32(store, version_fn)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise FunctionLoadError(self.name, f"failed while checking its ABI version: "
                                               f"{trap_summary(str(exc))}") from None
        finally:
            store.close()
        if version != ABI_VERSION:
            raise FunctionLoadError(self.name, f"edged_abi_version() returned {version}; edged speaks {ABI_VERSION}")

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, frame: Frame, scratch: Scratch) -> CallResult:
        """Run one call on this thread; raise a FunctionError subclass when it fails."""
        if not self._validated:
            raise RuntimeError(f"function {self.name} was not validated")
        started = time.perf_counter()
        ctx = CallContext(self.name, self.settings, time.monotonic() + self.settings.timeout_ms / 1000,
                          self.logger)
        try:
            if self.settings.abi == "frame-v1":
                attempt = self._run_reactor(ctx, frame, scratch)
            else:
                scratch.write_stdin(frame.raw)
                attempt = self._run_command(ctx, scratch)
        finally:
            if self._extension is not None:
                # E.g. WASI-NN gives back the interpreters this call borrowed.
                self._extension.end_call(ctx)
        # The store is gone: map what happened, then encode.
        try:
            stderr = scratch.log_stderr(self.logger)
            failure = self._failure(attempt, ctx, stderr, scratch)
            if failure is not None:
                raise failure from (attempt.trap or attempt.error)
            output = ctx.output if self.settings.abi == "frame-v1" else self._stdout(scratch)
            assert output is not None
        finally:
            scratch.reset()
        encode_started = time.perf_counter()
        content_type, body = output.content_type, output.body
        if output.kind == ResultKind.FRAME:
            content_type, body = encode_pixels(output.width, output.height, output.channels, output.body,
                                               frame.format_code)
        finished = time.perf_counter()
        return CallResult(
            function=self.name, content_type=content_type, body=body, json=output.json,
            duration_ms=(finished - started) * 1000, instantiate_ms=attempt.instantiate_ms,
            run_ms=attempt.run_ms, encode_ms=(finished - encode_started) * 1000,
        )

    def _input(self, frame: Frame) -> tuple[bytes, bytes]:
        if self.settings.input == "frame":
            data = frame.pixels
            header = pack_header(KIND_FRAME, frame.width, frame.height, 3, frame.format_code, len(data))
        else:
            data = frame.raw
            header = pack_header(KIND_RAW, 0, 0, 0, frame.format_code, len(data))
        return header, data

    def _attempt(self, ctx: CallContext, scratch: Scratch, body: _Body) -> _Attempt:
        """A fresh store and instance; ``body`` runs the ABI's part; traps are gathered, never raised."""
        attempt = _Attempt()
        t0 = time.perf_counter()
        store = self._store()
        store.set_wasi(self._wasi(scratch))
        memory: wasmtime.Memory | None = None
        run_started: float | None = None
        with activate(ctx):
            try:
                instance, memory = self._fresh_instance(store)
                run_started = time.perf_counter()
                attempt.instantiate_ms = (run_started - t0) * 1000
                body(store, instance, memory, attempt)
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

    def _run_reactor(self, ctx: CallContext, frame: Frame, scratch: Scratch) -> _Attempt:
        header, data = self._input(frame)
        total = HEADER_SIZE + len(data)

        def body(store: wasmtime.Store, instance: wasmtime.Instance, memory: wasmtime.Memory | None,
                 attempt: _Attempt) -> None:
            self._initialize(store, instance)
            alloc, run = export(store, instance, "edged_alloc"), export(store, instance, "edged_run")
            if memory is None or not isinstance(alloc, wasmtime.Func) or not isinstance(run, wasmtime.Func):
                attempt.bad_pointer = "the instance lacks memory, edged_alloc or edged_run"
                return
            # Both signatures were checked by validate(): the unchecked calls are safe.
            ptr = u32(call_i32(store, alloc, total) or 0)
            if ptr == 0:
                attempt.alloc_failed = total
                return
            guest = GuestMemory(memory, store)
            try:
                guest.write(ptr, header)
                guest.write(ptr + HEADER_SIZE, data)
            except GuestMemoryError as exc:
                attempt.bad_pointer = f"edged_alloc({total}) returned {ptr:#x}: {exc}"
                return
            attempt.status = call_i32(store, run, ptr, total)

        return self._attempt(ctx, scratch, body)

    def _run_command(self, ctx: CallContext, scratch: Scratch) -> _Attempt:
        def body(store: wasmtime.Store, instance: wasmtime.Instance, memory: wasmtime.Memory | None,
                 attempt: _Attempt) -> None:
            start = export(store, instance, "_start")
            assert isinstance(start, wasmtime.Func)
            call_i32(store, start, results=0)  # validate() checked _start: () -> ()
            attempt.status = 0

        return self._attempt(ctx, scratch, body)

    # -- outcomes ------------------------------------------------------------------------------------

    def _out_of_memory(self, attempt: _Attempt, stderr: str) -> bool:
        """Whether a trap was really the memory limit.

        wasmtime-py exposes no hook on failed ``memory.grow``, so this is a heuristic: the limit makes
        ``memory.grow`` return -1, after which a Rust guest aborts (a trap) and a C guest usually traps
        on a NULL pointer. So a trap counts as memory_limit when the guest's memory had grown to within
        one 64 KiB page of ``memory_mb``, or when its stderr says "memory allocation of ... failed"
        (Rust's message, printed when one large request fails even far below the limit).
        """
        if attempt.memory_bytes + WASM_PAGE > self._memory_limit:
            return True
        return any(marker in stderr for marker in _OOM_MARKERS)

    def _failure(self, attempt: _Attempt, ctx: CallContext, stderr: str, scratch: Scratch) -> FunctionError | None:
        s = self.settings
        if attempt.trap is not None:
            trap = attempt.trap
            if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
                return FunctionTimeout(f"ran past its timeout of {s.timeout_ms} ms")
            summary = trap_summary(trap.message)
            frames = trap.frames
            if frames and frames[0].func_name:
                summary += f" (in {frames[0].func_name})"
            if self._out_of_memory(attempt, stderr):
                return MemoryLimit(f"reached its memory limit of {s.memory_mb} MiB: {summary}")
            return FunctionTrap(summary)
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
        if s.abi == "frame-v1":
            if ctx.output_error is not None:
                return BadOutput(ctx.output_error)
            if ctx.output is None:
                return BadOutput("no result: edged_run returned 0 without calling edged.output")
        return None

    def _failure_detail(self, status: int, ctx: CallContext, stderr: str, scratch: Scratch) -> str:
        """The guest's JSON result when it set one before failing, else what is known about the failure."""
        if self.settings.abi == "frame-v1":
            output = ctx.output
            if output is not None and output.json is not None:
                return output.body.decode("utf-8")[:4096]
            return f"edged_run returned {status}"
        data = scratch.read_stdout(min(self.settings.max_output_bytes, 64 * 1024))
        if data:
            with contextlib.suppress(OutputRejected):
                output = classify_stdout(data)
                if output.json is not None:
                    return data.decode("utf-8")[:4096]
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        detail = f"exited with status {status}"
        return f"{detail}: {last[:500]}" if last else detail

    def _stdout(self, scratch: Scratch) -> Output:
        limit = self.settings.max_output_bytes
        data = scratch.read_stdout(limit)
        if data is None:
            raise BadOutput(f"stdout is over max_output_bytes ({limit})")
        try:
            return classify_stdout(data)
        except OutputRejected as exc:
            raise BadOutput(exc.detail) from None
