"""``edged.log(level, ptr, len) -> errno``: guest text to the daemon log, when the function's grant allows."""

from __future__ import annotations

import logging

import wasmtime

from edged.wasm.abi import Errno
from edged.wasm.host.context import LOG_BUDGET, current, escape_text
from edged.wasm.host.guard import EDGED_ERRNOS, host_function
from edged.wasm.memory import u32

__all__ = ["LEVELS", "edged_log", "log_lines"]

#: Python logging levels a guest may use (debug, info, warning, error).
LEVELS = frozenset({logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR})


def log_lines(logger: logging.Logger, level: int, text: str) -> None:
    """Log each line of guest text separately, escaped, so a guest cannot forge daemon log lines."""
    for line in text.splitlines():
        logger.log(level, "%s", escape_text(line))


@host_function("edged.log", EDGED_ERRNOS)
def edged_log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> int:
    ctx = current()
    if ctx is None or not ctx.settings.log:
        return Errno.DENIED
    if level not in LEVELS:
        return Errno.INVALID_ARGUMENT
    length = u32(length)
    if ctx.log_bytes + length > LOG_BUDGET:
        if ctx.log_bytes <= LOG_BUDGET:
            ctx.logger.warning("log budget of %d bytes per call used up; further lines are dropped", LOG_BUDGET)
            ctx.log_bytes = LOG_BUDGET + 1
        return Errno.TOO_LARGE
    memory = ctx.guest_memory(caller)
    if memory is None:
        return Errno.INVALID_ARGUMENT
    data = memory.read(u32(ptr), length)  # outside the memory: the guard answers invalid_argument
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return Errno.INVALID_ARGUMENT
    ctx.log_bytes += length
    if ctx.logger.isEnabledFor(level):
        log_lines(ctx.logger, level, text)
    return Errno.OK
