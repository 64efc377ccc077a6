"""Host imports of module ``edged`` (docs/ABI.md) and the hook through which other hosts (WASI-NN) link.

Every import is defined on a linker with ``define_func(..., access_caller=True)``: store-independent,
so one linker serves every call on its worker thread. The call itself is found through
``edged.wasm.host.context.current()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import wasmtime

from edged.settings import FunctionSettings
from edged.wasm.abi import Errno, GuestMemory, GuestMemoryError, OutputRejected, parse_output, u32
from edged.wasm.host.context import CallContext, activate, current, host_function
from edged.wasm.host.http import edged_http_request
from edged.wasm.host.log import edged_log

__all__ = ["CallContext", "HostExtension", "activate", "current", "edged_output", "link_edged"]

_I32 = wasmtime.ValType.i32


@runtime_checkable
class HostExtension(Protocol):
    """Something that adds imports for some functions (the WASI-NN host implements this).

    ``link`` is called once per worker thread and function, with that thread's linker. Host functions it
    defines must never raise (see ``host_function``) and find their call with ``current()``; per-call
    state belongs in ``CallContext.extensions``. ``check`` runs when the module is loaded; ``end_call``
    runs on the call's thread once the guest is done (whatever happened), to release per-call state.
    """

    def link(self, linker: wasmtime.Linker, function: str, settings: FunctionSettings) -> None: ...

    def check(self, function: str, settings: FunctionSettings, module: wasmtime.Module) -> str | None:
        """Why this module must not load for this function (e.g. an import it has no grant for), or None."""
        ...

    def end_call(self, ctx: CallContext) -> None: ...


@host_function("edged.output", on_error=Errno.IO_ERROR)
def edged_output(caller: wasmtime.Caller, ptr: int, length: int, kind: int) -> int:
    ctx = current()
    if ctx is None:
        return Errno.DENIED
    if ctx.output is not None:
        ctx.reject_output("edged.output was called more than once")
        return Errno.ALREADY_SET
    length = u32(length)
    limit = ctx.settings.max_output_bytes
    if length > limit:
        ctx.reject_output(f"result of {length} bytes is over max_output_bytes ({limit})")
        return Errno.TOO_LARGE
    memory = GuestMemory.of_caller(caller)
    if memory is None:
        ctx.reject_output("the module exports no memory")
        return Errno.INVALID_ARGUMENT
    try:
        ctx.output = parse_output(kind, memory, u32(ptr), length)
    except GuestMemoryError as exc:
        ctx.reject_output(f"edged.output: {exc}")
        return Errno.INVALID_ARGUMENT
    except OutputRejected as exc:
        ctx.reject_output(exc.detail)
        return exc.errno
    return Errno.OK


def _define(linker: wasmtime.Linker, name: str, params: int, func: Callable[..., int]) -> None:
    ty = wasmtime.FuncType([_I32() for _ in range(params)], [_I32()])
    linker.define_func("edged", name, ty, func, access_caller=True)


def link_edged(linker: wasmtime.Linker) -> None:
    """Define ``edged.output``, ``edged.log`` and ``edged.http_request``; grants are checked per call."""
    _define(linker, "output", 3, edged_output)
    _define(linker, "log", 3, edged_log)
    _define(linker, "http_request", 7, edged_http_request)
