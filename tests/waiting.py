"""One way for tests to wait on a condition: poll it, bounded in time, and fail naming what never came.

``wait_until`` blocks a plain thread; ``until`` runs on the caller's event loop and also takes a
predicate that returns an awaitable (a store query). Both poll every ``interval`` seconds. ``what``
names the condition in the failure; a callable is asked only then, so it can show the state at the end.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["Described", "until", "wait_until"]

#: What a wait is for: text, or a callable giving it when the wait fails.
Described = str | Callable[[], str]


def _timed_out(timeout: float, what: Described, predicate: object) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout}s waiting for {text or predicate}")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: Described = "",
               interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, predicate)
        time.sleep(interval)


async def until(predicate: Callable[[], bool | Awaitable[bool]], within: float = 30.0, what: Described = "",
                interval: float = 0.01) -> None:
    """Like wait_until, from a coroutine: the loop keeps running between polls."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise _timed_out(within, what, predicate)
        await asyncio.sleep(interval)
