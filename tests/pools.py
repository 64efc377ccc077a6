"""Calling a FunctionPool from plain (threaded) test code the way the daemon does: ``await pool.call``.

The pool's entry points are the daemon's (``call``, ``decode``, ``decode_and_call`` on the loop, and
``decode_and_call_sync`` for ``edged invoke``); these run the awaitable ones on a short-lived loop.
"""

from __future__ import annotations

import asyncio

from edged.frames import Frame
from edged.wasm.outcome import CallResult
from edged.wasm.pool import FunctionPool

__all__ = ["call_sync", "decode_sync"]


def call_sync(pool: FunctionPool, name: str, frame: Frame) -> CallResult:
    """``await pool.call(name, frame)`` from a thread without a running loop."""
    return asyncio.run(pool.call(name, frame))


def decode_sync(pool: FunctionPool, data: bytes, max_pixels: int) -> Frame:
    """``await pool.decode(data, max_pixels)`` from a thread without a running loop."""
    return asyncio.run(pool.decode(data, max_pixels))
