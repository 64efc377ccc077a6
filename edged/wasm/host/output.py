"""``edged.output(ptr, len, kind) -> errno``: the call's one result (docs/ABI.md, "Result kinds")."""

from __future__ import annotations

import wasmtime

from edged.wasm.abi import Errno, OutputRejected, parse_output
from edged.wasm.host.context import current
from edged.wasm.host.guard import EDGED_ERRNOS, host_function
from edged.wasm.memory import GuestMemoryError, u32

__all__ = ["edged_output"]

@host_function("edged.output", EDGED_ERRNOS)
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
    memory = ctx.guest_memory(caller)
    if memory is None:
        ctx.reject_output("the module exports no memory")
        return Errno.INVALID_ARGUMENT
    calls = ctx.memory

    def admit(nbytes: int) -> None:
        # The copy out of the guest's memory is made while that memory is alive: it is reserved first.
        if calls is not None and not calls.reserve_output(nbytes):
            raise OutputRejected(Errno.TOO_LARGE, calls.refused or
                                 f"a result of {nbytes} bytes can never fit in edged's memory budget")

    try:
        ctx.output = parse_output(kind, memory, u32(ptr), length, max_pixels=ctx.max_result_pixels, admit=admit)
    except GuestMemoryError as exc:
        ctx.reject_output(f"edged.output: {exc}")
        return Errno.INVALID_ARGUMENT
    except OutputRejected as exc:
        ctx.reject_output(exc.detail)
        return exc.errno
    return Errno.OK
