"""The pool's worker threads: jobs in through one queue, results back to the caller's event loop.

What ``ThreadPoolExecutor.submit`` + ``asyncio.wrap_future`` do, with one future instead of two: a job
completes the caller's asyncio future with one ``call_soon_threadsafe``; no ``concurrent.futures.Future``
with its condition variable and callbacks in between (measured: ~30 us of a ~150 us hand-off on the
no-op call, bench/pool_bench.py ``noop``).

The same guarantees as the executor: a job cancelled before a worker takes it never runs (its ``on_end``
still runs, once); ``shutdown`` lets every job already queued run, then joins the threads; ``submit``
after ``shutdown`` raises RuntimeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Job", "Permits", "Workers"]

_T = TypeVar("_T")

_PENDING, _RUNNING, _CANCELLED = 0, 1, 2


class Job(Generic[_T]):
    """``fn(*args)`` for an awaiting caller; ``on_end`` runs once when it ends or is cancelled unrun."""

    __slots__ = ("_args", "_fn", "_lock", "_loop", "_on_end", "_state", "future")

    def __init__(self, fn: Callable[..., _T], args: tuple[Any, ...], on_end: Callable[[], None]) -> None:
        self._fn = fn
        self._args = args
        self._on_end = on_end
        self._lock = threading.Lock()
        self._state = _PENDING
        self._loop = asyncio.get_running_loop()
        #: What the caller awaits; cancelling it cancels the job unless a worker has taken it.
        self.future: asyncio.Future[_T] = self._loop.create_future()
        self.future.add_done_callback(self._cancelled)

    def _cancelled(self, future: asyncio.Future[_T]) -> None:
        if not future.cancelled():
            return
        with self._lock:
            if self._state != _PENDING:
                return
            self._state = _CANCELLED
        self._on_end()

    def run(self) -> None:
        """On a worker: run unless cancelled, end, then hand the outcome to the caller's loop."""
        with self._lock:
            if self._state != _PENDING:
                return
            self._state = _RUNNING
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, as an executor does)
            error = exc
        finally:
            self._on_end()
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody awaits this any more
            self._loop.call_soon_threadsafe(self._settle, result, error)

    def _settle(self, result: _T | None, error: BaseException | None) -> None:
        if self.future.done():  # cancelled while it ran
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)  # type: ignore[arg-type]  # None only with an error


class Workers:
    """``count`` threads named ``<prefix>_<n>``, taking jobs from one queue in order."""

    def __init__(self, count: int, prefix: str) -> None:
        self._queue: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{prefix}_{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job[Any]) -> None:
        """Queue ``job``; RuntimeError after ``shutdown``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the workers are shut down")
            self._queue.put(job)

    def shutdown(self) -> None:
        """Run every job queued so far, then stop and join the threads."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            job.run()
            del job  # not kept alive (with its frame and result) while the thread waits for the next


class Permits:
    """``count`` permits held with ``with``, blocking while none is free: a semaphore whose acquire and release
    are one C call each on a queue of tokens (``threading.BoundedSemaphore``'s are Python code under a
    Condition: ~3 us a pair here, paid by every job)."""

    __slots__ = ("_tokens",)

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def __enter__(self) -> None:
        self._tokens.get()

    def __exit__(self, *exc: object) -> None:
        self._tokens.put(None)
