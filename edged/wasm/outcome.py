"""What a call produced: its result, what happened inside the Store, and traps mapped to typed errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import wasmtime

from edged.errors import FunctionError, FunctionTimeout, FunctionTrap, MemoryLimit
from edged.settings import ConfigError, FunctionSettings

__all__ = ["Attempt", "CallResult", "FunctionLoadError", "slot_setters", "trap_failure", "trap_summary"]

WASM_PAGE = 64 * 1024
#: Text in a guest's stderr that means its allocator gave up (Rust's alloc error handler prints it).
_OOM_MARKERS = ("memory allocation of",)


@dataclass(frozen=True, slots=True, init=False)
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
    #: Hex SHA-256 of ``body`` when the pool hashed it on the worker (the pipeline's calls), else "".
    sha256: str = ""

    def __init__(self, function: str, content_type: str, body: bytes, json: dict[str, Any] | None,
                 duration_ms: float, instantiate_ms: float, run_ms: float, encode_ms: float = 0.0,
                 sha256: str = "") -> None:
        put = _RESULT_SLOTS
        put[0](self, function)
        put[1](self, content_type)
        put[2](self, body)
        put[3](self, json)
        put[4](self, duration_ms)
        put[5](self, instantiate_ms)
        put[6](self, run_ms)
        put[7](self, encode_ms)
        put[8](self, sha256)


def slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of a frozen slots dataclass's fields, in order, for its own ``__init__``: still frozen to
    everyone else, but made without dataclass's ``object.__setattr__`` per field (measured: a CallResult in
    2.7 us instead of 4.3; one is made on every call)."""
    return tuple(vars(cls)[f.name].__set__ for f in fields(cls))


_RESULT_SLOTS = slot_setters(CallResult)


class FunctionLoadError(ConfigError):
    """A function's module is missing, does not compile, or does not speak its ABI."""

    def __init__(self, function: str, detail: str) -> None:
        super().__init__([(f"functions.{function}.module", detail)])
        self.function = function
        self.detail = detail


@dataclass(slots=True)
class Attempt:
    """What happened inside the store, gathered while it was alive."""

    instantiate_ms: float = 0.0
    run_ms: float = 0.0
    status: int | None = None
    trap: wasmtime.Trap | None = None
    error: wasmtime.WasmtimeError | None = None
    memory_bytes: int = 0
    alloc_failed: int | None = None
    bad_pointer: str | None = None


def trap_summary(message: str) -> str:
    """The useful line of a wasmtime trap/error message (its first line is only 'error while executing')."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1:]
        if after:
            return after[0].removeprefix("0: ")
    return lines[0] if lines else "unknown trap"


def _out_of_memory(attempt: Attempt, stderr: str, memory_limit: int) -> bool:
    """Whether a trap was really the memory limit.

    wasmtime-py exposes no hook on failed ``memory.grow``, so this is a heuristic: the limit makes
    ``memory.grow`` return -1, after which a Rust guest aborts (a trap) and a C guest usually traps
    on a NULL pointer. So a trap counts as memory_limit when the guest's memory had grown to within
    one 64 KiB page of ``memory_mb``, or when its stderr says "memory allocation of ... failed"
    (Rust's message, printed when one large request fails even far below the limit).
    """
    if attempt.memory_bytes + WASM_PAGE > memory_limit:
        return True
    return any(marker in stderr for marker in _OOM_MARKERS)


def trap_failure(attempt: Attempt, stderr: str, settings: FunctionSettings, memory_limit: int) -> FunctionError:
    """The typed error for ``attempt.trap``: timeout, memory limit or trap."""
    trap = attempt.trap
    assert trap is not None
    if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
        return FunctionTimeout(f"ran past its timeout of {settings.timeout_ms} ms")
    summary = trap_summary(trap.message)
    frames = trap.frames
    if frames and frames[0].func_name:
        summary += f" (in {frames[0].func_name})"
    if _out_of_memory(attempt, stderr, memory_limit):
        return MemoryLimit(f"reached its memory limit of {settings.memory_mb} MiB: {summary}")
    return FunctionTrap(summary)
