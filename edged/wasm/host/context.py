"""The state of the call running on this worker thread, as host imports see it.

Host functions are defined once per linker (``Linker.define_func``), not per call, so they find the
current call through a thread-local: a worker thread runs one call at a time, and a guest only calls
back into the host on the thread that runs it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec

import wasmtime

from edged.settings import FunctionSettings
from edged.wasm.abi import Output

__all__ = ["CallContext", "activate", "current", "escape_text", "host_function"]

log = logging.getLogger("edged.wasm.host")

#: What a guest may write to the log (edged.log) or stderr in one call.
LOG_BUDGET = 64 * 1024

_P = ParamSpec("_P")
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
    log_bytes: int = 0
    #: Per-call state of host extensions (e.g. WASI-NN graphs), keyed by extension name.
    extensions: dict[str, object] = field(default_factory=dict)

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


@contextmanager
def activate(ctx: CallContext) -> Iterator[CallContext]:
    _local.call = ctx
    try:
        yield ctx
    finally:
        _local.call = None


def host_function(
    name: str, on_error: int
) -> Callable[[Callable[Concatenate[wasmtime.Caller, _P], int]], Callable[Concatenate[wasmtime.Caller, _P], int]]:
    """Make a host import that never raises: any exception is logged and ``on_error`` goes to the guest.

    wasmtime-py hands a host exception back through module-global state, which another worker thread
    could pick up; an errno is the only safe way out.
    """

    def decorate(
        fn: Callable[Concatenate[wasmtime.Caller, _P], int],
    ) -> Callable[Concatenate[wasmtime.Caller, _P], int]:
        @functools.wraps(fn)
        def wrapper(caller: wasmtime.Caller, /, *args: _P.args, **kwargs: _P.kwargs) -> int:
            try:
                result = fn(caller, *args, **kwargs)
                return int(result)
            except Exception:
                ctx = current()
                log.exception("host import %s failed in function %s", name, ctx.function if ctx else "?")
                return on_error

        return wrapper

    return decorate
