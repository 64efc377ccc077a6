"""The state of the call running on this worker thread, as host imports see it.

Host functions are defined once per linker (``Linker.define_func``), not per call, so they find the
current call through a thread-local: a worker thread runs one call at a time, and a guest only calls
back into the host on the thread that runs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import wasmtime

from edged.settings import FunctionSettings
from edged.wasm.abi import Output
from edged.wasm.admission import CallMemory
from edged.wasm.memory import GuestMemory

__all__ = ["LOG_BUDGET", "CallContext", "activate", "current", "enter", "escape_text", "guest_memory"]

#: What a guest may write to the log (edged.log) or stderr in one call.
LOG_BUDGET = 64 * 1024

_local = threading.local()
# Control characters other than tab would let a guest forge log lines (newlines) or terminal escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F)}


def escape_text(text: str) -> str:
    return text.translate(_ESCAPES)


@dataclass(slots=True)
class CallContext:
    """One call: its function's settings and grants, its deadline, and what the guest produced so far."""

    function: str
    settings: FunctionSettings
    deadline: float
    logger: logging.Logger
    output: Output | None = None
    #: The first ABI violation seen by edged.output; the call then fails with bad_output.
    output_error: str | None = None
    #: The call's share of the memory budget (None: no budget, e.g. in start-up checks).
    memory: CallMemory | None = None
    #: Largest frame result (width * height); 0 for no bound.
    max_result_pixels: int = 0
    log_bytes: int = 0
    #: Per-call state of host extensions (e.g. WASI-NN graphs), keyed by extension name.
    extensions: dict[str, object] = field(default_factory=dict)
    #: How a host import sees the calling instance's memory when the runner knows it (edged.wasm.rawstore);
    #: None: look its ``memory`` export up through the Caller.
    memory_view: Callable[[wasmtime.Caller], GuestMemory] | None = None

    def guest_memory(self, caller: wasmtime.Caller) -> GuestMemory | None:
        """The calling instance's memory as it is now, or None when it exports none."""
        if self.memory_view is not None:
            return self.memory_view(caller)
        return GuestMemory.of_caller(caller)

    def remaining(self) -> float:
        """Seconds left before the call's timeout (epochs only interrupt guest code, not host code)."""
        return self.deadline - time.monotonic()

    def reject_output(self, detail: str) -> None:
        if self.output_error is None:
            self.output_error = detail


def current() -> CallContext | None:
    """The call running on this thread, or None (e.g. while a module is validated at startup)."""
    ctx: CallContext | None = getattr(_local, "call", None)
    return ctx


def guest_memory(caller: wasmtime.Caller) -> GuestMemory | None:
    """The calling instance's memory, as this thread's call sees it (``CallContext.guest_memory``); without a
    call, through the Caller."""
    ctx = current()
    return ctx.guest_memory(caller) if ctx is not None else GuestMemory.of_caller(caller)


def enter(ctx: CallContext | None) -> None:
    """Make ``ctx`` this thread's current call (None: no call); ``activate`` without a context manager."""
    _local.call = ctx


@contextmanager
def activate(ctx: CallContext) -> Iterator[CallContext]:
    _local.call = ctx
    try:
        yield ctx
    finally:
        _local.call = None
