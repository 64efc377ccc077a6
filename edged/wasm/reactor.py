"""The ``frame-v1`` runner (docs/ABI.md): a reactor that takes its input in memory and answers through
``edged.output``.

Calls take the raw path (edged.wasm.rawstore: exports by index, no wasmtime-py wrappers) when the
wasmtime-py in use allows it and the module's export indexes were checked at load; else the public one.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import wasmtime

from edged.errors import BadOutput, FunctionError
from edged.frames import Frame
from edged.rgb8 import pack_into
from edged.settings import FunctionSettings
from edged.wasm import rawstore
from edged.wasm.abi import ABI_VERSION, HEADER_SIZE, KIND_FRAME, KIND_RAW, Output, pack_header
from edged.wasm.host.context import CallContext, enter
from edged.wasm.host.link import HostExtension
from edged.wasm.memory import GuestMemory, GuestMemoryError, u32
from edged.wasm.outcome import Attempt, FunctionLoadError, trap_summary
from edged.wasm.rawcall import call_i32, export
from edged.wasm.runner import FunctionRunner, signature
from edged.wasm.scratch import Scratch

__all__ = ["FrameRunner"]

log = logging.getLogger(__name__)

_EXPECTED_EXPORTS = {
    "edged_abi_version": ((), ("i32",)),
    "edged_alloc": (("i32",), ("i32",)),
    "edged_run": (("i32", "i32"), ("i32",)),
}


class _Exports(NamedTuple):
    """The export indexes a raw call uses (``initialize``: -1 when the module has none)."""

    memory: int
    alloc: int
    run: int
    initialize: int

    @property
    def called(self) -> tuple[int, int, int]:
        """The functions a call uses, looked up with its instance."""
        return self.initialize, self.alloc, self.run


class FrameRunner(FunctionRunner):
    """``edged_alloc`` + ``edged_run`` on a fresh reactor instance; no stdin or stdout, stderr is logged."""

    abi = "frame-v1"

    def __init__(self, name: str, settings: FunctionSettings, module: wasmtime.Module, engine: wasmtime.Engine,
                 tick_ms: float, extension: HostExtension | None) -> None:
        super().__init__(name, settings, module, engine, tick_ms, extension)
        self._has_initialize = any(e.name == "_initialize" for e in module.exports)
        self._raw_input = settings.input == "raw"
        self.packs_pictures = not self._raw_input
        #: Set at load when calls may take the raw path (edged.wasm.rawstore).
        self._exports: _Exports | None = None

    def _export_problem(self, exports: dict[str, object]) -> str | None:
        if not isinstance(exports.get("memory"), wasmtime.MemoryType):
            return "a frame-v1 module must export its memory as 'memory'"
        init = exports.get("_initialize")
        if init is not None and (not isinstance(init, wasmtime.FuncType) or signature(init) != ((), ())):
            return "a frame-v1 module's _initialize, if any, must be () -> ()"
        for name, expected in _EXPECTED_EXPORTS.items():
            ty = exports.get(name)
            if not isinstance(ty, wasmtime.FuncType) or signature(ty) != expected:
                params, results = expected
                return f"a frame-v1 module must export {name}: ({', '.join(params)}) -> ({', '.join(results)})"
        return None

    def _check_loaded(self, pre: wasmtime.InstancePre) -> None:
        """Ask the module its ABI version (instantiates once, running ``_initialize``)."""
        store = self._store(None)
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
        self._exports = self._raw_exports(pre) if rawstore.FAST else None

    def _raw_exports(self, pre: wasmtime.InstancePre) -> _Exports | None:
        """The indexes raw calls use, once an instance confirmed each one's name; None: take the public path."""
        found = rawstore.indexes(self.module, ("memory", "edged_alloc", "edged_run", "_initialize"))
        exports = _Exports(found["memory"], found["edged_alloc"], found["edged_run"], found.get("_initialize", -1))
        raw = rawstore.RawCall(self.engine, pre, len(self.module.exports))
        try:
            raw.open(self._memory_limit, self._ticks, self._wasi_config(None))
            raw.instantiate(exports.memory)
            names = {i: raw.export_name(i) for i in exports if i >= 0}
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            log.debug("function %s: no raw calls: %s", self.name, exc)
            return None
        finally:
            raw.close()
        expected = {i: name for name, i in found.items()}
        return exports if names == expected else None

    def _initialize(self, store: wasmtime.Store, instance: wasmtime.Instance) -> None:
        """Run a reactor's ``_initialize`` when it has one (checked to be () -> () by validate)."""
        if self._has_initialize:
            init = export(store, instance, "_initialize")
            assert isinstance(init, wasmtime.Func)
            call_i32(store, init, results=0)

    def _stdio(self, wasi: wasmtime.WasiConfig, scratch: Scratch) -> None:
        wasi.stderr_file = str(scratch.stderr)

    def _input(self, frame: Frame) -> tuple[bytes, int, bytes | None]:
        """The header, the data's length and the data handed to ``edged_alloc``'s buffer; data None: the
        frame's kept picture, packed straight into that buffer (edged.rgb8)."""
        if self._raw_input:
            data = frame.raw
            return pack_header(KIND_RAW, 0, 0, 0, frame.format_code, len(data)), len(data), data
        direct = not frame.pixels and frame.picture is not None
        length = 3 * frame.width * frame.height if direct else len(frame.pixels)
        header = pack_header(KIND_FRAME, frame.width, frame.height, 3, frame.format_code, length)
        return header, length, None if direct else frame.pixels

    @staticmethod
    def _hand_over(guest: GuestMemory, ptr: int, header: bytes, frame: Frame, data: bytes | None, length: int,
                   attempt: Attempt) -> bool:
        """Put the input in the guest's buffer at ``ptr``; False (and why, in ``attempt``) when it is outside."""
        try:
            guest.write(ptr, header)
            if data is not None:
                guest.write(ptr + HEADER_SIZE, data)
            elif frame.picture is None or not pack_into(frame.picture, frame.width, frame.height,
                                                        guest.view(ptr + HEADER_SIZE, length)):
                guest.write(ptr + HEADER_SIZE, frame.rgb8())
        except GuestMemoryError as exc:
            attempt.bad_pointer = f"edged_alloc({HEADER_SIZE + length}) returned {ptr:#x}: {exc}"
            return False
        return True

    def _attempt(self, ctx: CallContext, frame: Frame, scratch: Scratch, ticks: int) -> Attempt:
        """The public path's steps (``FunctionRunner._attempt``) on raw handles, when the module allows."""
        exports = self._exports
        if exports is None:
            return super()._attempt(ctx, frame, scratch, ticks)
        attempt = Attempt()
        t0 = time.perf_counter()
        raw: rawstore.RawCall | None = getattr(self._local, "raw", None)
        if raw is None:
            raw = self._local.raw = rawstore.RawCall(self.engine, self._instance_pre(), len(self.module.exports))
        run_started: float | None = None
        try:
            raw.open(self._memory_limit, ticks, self._wasi_config(scratch))
        except BaseException:
            raw.close()
            raise
        enter(ctx)
        try:
            raw.instantiate(exports.memory, exports.called)
            ctx.memory_view = raw.memory
            run_started = time.perf_counter()
            attempt.instantiate_ms = (run_started - t0) * 1000
            self._run_raw(raw, exports, frame, attempt)
        except wasmtime.ExitTrap as exc:
            attempt.status = exc.code
        except wasmtime.Trap as exc:
            attempt.trap = exc.with_traceback(None)
            attempt.memory_bytes = raw.memory_size()
        except wasmtime.WasmtimeError as exc:
            attempt.error = exc.with_traceback(None)
        finally:
            ctx.memory_view = None
            raw.close()
            enter(None)
        if run_started is not None:
            attempt.run_ms = (time.perf_counter() - run_started) * 1000
        return attempt

    def _run_raw(self, raw: rawstore.RawCall, exports: _Exports, frame: Frame, attempt: Attempt) -> None:
        header, length, data = self._input(frame)
        total = HEADER_SIZE + length
        if exports.initialize >= 0:
            raw.call(exports.initialize, results=0)
        ptr = u32(raw.call(exports.alloc, total))
        if ptr == 0:
            attempt.alloc_failed = total
            return
        # After edged_alloc, which may have grown the memory.
        if self._hand_over(raw.memory(), ptr, header, frame, data, length, attempt):
            attempt.status = raw.call(exports.run, ptr, total)

    def _run(self, store: wasmtime.Store, instance: wasmtime.Instance, memory: wasmtime.Memory | None,
             frame: Frame, attempt: Attempt) -> None:
        header, length, data = self._input(frame)
        total = HEADER_SIZE + length
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
        # After edged_alloc, which may have grown the memory.
        if self._hand_over(GuestMemory(memory, store), ptr, header, frame, data, length, attempt):
            attempt.status = call_i32(store, run, ptr, total)

    def _refused(self, ctx: CallContext, scratch: Scratch) -> FunctionError | None:
        """edged.output refused the result: that is the call's failure, even if the guest then failed."""
        return BadOutput(ctx.output_error) if ctx.output_error is not None else None

    def _output(self, ctx: CallContext, scratch: Scratch) -> Output:
        if ctx.output_error is not None:
            raise BadOutput(ctx.output_error)
        if ctx.output is None:
            raise BadOutput("no result: edged_run returned 0 without calling edged.output")
        return ctx.output

    def _failure_detail(self, status: int, ctx: CallContext, stderr: str, scratch: Scratch) -> str:
        """The guest's JSON result when it set one before failing, else edged_run's status."""
        output = ctx.output
        if output is not None and output.json is not None:
            return output.body.decode("utf-8")[:4096]
        return f"edged_run returned {status}"
