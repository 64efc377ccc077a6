"""Group commit: jobs queued for the writer thread share one transaction and one fsync.

A writer job (a ``body(con, delta)``) is queued with ``JobQueue.put``, and a drain is submitted to the
writer thread for it (edged.store.db ``Database.commit``). The first drain to run takes every job queued
by then (up to ``MAX_JOBS`` and ``MAX_BYTES``) and runs them in ONE transaction, each inside its own
SAVEPOINT: a job that raises (OutboxFull, a constraint) is rolled back alone and the others still commit.
Later drains find nothing left, or the rest. Nothing waits for company: a job alone commits at once, as
before, and without a savepoint (its failure rolls back a transaction holding nothing else).

A job may be marked not ``durable`` (MQTT publish marks, attempt counts): a batch of such jobs only commits
with ``synchronous = NORMAL``, on disk for any crash of the process (the WAL is written before COMMIT
returns) but fsynced only with the next durable transaction. A batch holding one durable job is fsynced.

Jobs of one kind next to each other in a batch (``Job.many``, e.g. commits of inputs) are written together,
one statement per table for all of them (executemany), inside ONE savepoint: when ``many`` declines
(space to free, expiry due) or raises, that savepoint is rolled back and the same jobs run one by one as
above, so each still fails alone.

After the COMMIT returned (synchronous=FULL: on disk), each committed job's counter changes are applied,
every job is settled in queue order, and then the callers' futures are resolved with ONE wake-up of their
event loop (not one per job: each wake-up hands the GIL to the loop). While a batch runs,
``Batch.staged`` holds the counter changes of the jobs already in it, so each job's space accounting
sees the rows of the jobs before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edged.store.counters import Counters, Delta

__all__ = ["MAX_BYTES", "MAX_JOBS", "Batch", "Job", "JobQueue", "Many", "Settle", "fail"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: At most this many jobs share a transaction (bounded work while the write lock is held).
MAX_JOBS = 64
#: ... and at most this many bytes of rows (images); a larger job still runs, alone.
MAX_BYTES = 16 * 1024 * 1024

#: Called on the writer thread once the job's transaction ended: with None when it committed, else
#: with the job's error. It must not raise.
Settle = Callable[[BaseException | None], None]
#: Writes several jobs at once (writer thread, inside a savepoint), setting each job's result and delta;
#: False when they must go one by one instead (nothing written).
Many = Callable[[sqlite3.Connection, "list[Job[Any]]"], bool]


@dataclass(slots=True, eq=False)
class Job(Generic[_T]):
    """One caller's writes: its body, its size in bytes (for the bound), its settle hook and the future its
    caller awaits on its loop (None: run directly, ``Database.transaction``); ``many`` writes it together
    with its neighbours of the same ``many``, from ``item``."""

    body: Callable[[sqlite3.Connection, Delta], _T]
    size: int = 0
    settle: Settle | None = None
    waiter: asyncio.Future[_T] | None = None
    #: False: the rows need to survive a crash of the process, not a power cut (no fsync of their own).
    durable: bool = True
    delta: Delta = field(default_factory=Delta)
    result: _T | None = None
    error: BaseException | None = None
    many: Many | None = None
    item: Any = None


class JobQueue:
    """Jobs waiting for the writer, taken in order, a bounded batch at a time.

    One drain at most is due (submitted, not started) at a time: the callers queued behind it need none
    of their own, so a batch of n costs one trip through the executor, not n.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: deque[Job[Any]] = deque()
        self._drain_due = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job[Any]) -> bool:
        """Queue ``job``; True when the caller must submit a drain (none is due)."""
        with self._lock:
            self._jobs.append(job)
            if self._drain_due:
                return False
            self._drain_due = True
            return True

    def take(self) -> tuple[list[Job[Any]], bool]:
        """The next batch (jobs in queue order whose callers still wait: a cancelled one is dropped), and
        whether jobs are left, for which the caller must submit the next drain."""
        batch: list[Job[Any]] = []
        size = 0
        with self._lock:
            while self._jobs and len(batch) < MAX_JOBS:
                job = self._jobs[0]
                if batch and size + job.size > MAX_BYTES:
                    break
                self._jobs.popleft()
                # A caller cancelled before its job started wants nothing written (as an executor's would).
                if job.waiter is None or not job.waiter.cancelled():
                    batch.append(job)
                    size += job.size
            self._drain_due = bool(self._jobs)
            return batch, self._drain_due

    def abandon(self) -> list[Job[Any]]:
        """Every queued job, taken out (no drain can run any more)."""
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
            self._drain_due = False
            return jobs


class Batch:
    """Runs jobs in one transaction on the writer thread; ``staged`` is read by edged.store.space."""

    def __init__(self, counters: Counters, wrap_error: Callable[[sqlite3.Error], BaseException]) -> None:
        self._counters = counters
        self._wrap_error = wrap_error
        #: The counter changes of the jobs already committed to the open transaction.
        self.staged = Delta()
        self._synchronous = "FULL"

    def run(self, con: sqlite3.Connection, jobs: list[Job[Any]]) -> None:
        """Run ``jobs`` in ONE transaction, each in its own savepoint; every job ends with a result or an
        error (the shared COMMIT failing is every job's error), and is settled in order."""
        self.staged = Delta()
        self._sync(con, "FULL" if any(job.durable for job in jobs) else "NORMAL")
        con.execute("BEGIN IMMEDIATE")
        try:
            for run in _runs(jobs):
                if len(run) == 1 or not self._many(con, run):
                    for job in run:
                        self._one(con, job, savepoint=len(jobs) > 1)
            self._persist(con)
            con.execute("COMMIT")
        except BaseException as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            error = self._wrap_error(exc) if isinstance(exc, sqlite3.Error) else exc
            for job in jobs:
                if job.error is None:
                    job.error = error
            if not isinstance(exc, Exception):
                self._settle(jobs)
                raise
        else:
            self._counters.transaction_committed(sum(job.error is None for job in jobs))
        finally:
            self.staged = Delta()
        self._settle(jobs)

    def _sync(self, con: sqlite3.Connection, mode: str) -> None:
        if mode != self._synchronous:
            con.execute(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def _one(self, con: sqlite3.Connection, job: Job[Any], *, savepoint: bool) -> None:
        if savepoint:
            con.execute("SAVEPOINT job")
        try:
            job.result = job.body(con, job.delta)
        except Exception as exc:
            job.error = self._wrap_error(exc) if isinstance(exc, sqlite3.Error) else exc
            if not savepoint or not con.in_transaction:
                # Alone, or SQLite rolled the whole transaction back (disk full, I/O error): all of it goes.
                raise
            con.execute("ROLLBACK TO job")
            con.execute("RELEASE job")
            return
        if savepoint:
            con.execute("RELEASE job")
        self.staged.add(job.delta)

    def _many(self, con: sqlite3.Connection, run: list[Job[Any]]) -> bool:
        """Write ``run`` at once in one savepoint; False (rolled back) when it must go one job at a time."""
        many = run[0].many
        assert many is not None
        con.execute("SAVEPOINT many")
        try:
            written = many(con, run)
        except Exception:
            if not con.in_transaction:
                raise  # SQLite rolled the whole transaction back (disk full, I/O error): all of it goes
            written = False
        if not written:
            con.execute("ROLLBACK TO many")
            for job in run:
                job.delta, job.result = Delta(), None
        con.execute("RELEASE many")
        if written:
            for job in run:
                self.staged.add(job.delta)
        return written

    def _persist(self, con: sqlite3.Connection) -> None:
        """The committed jobs' evictions and quarantines, kept in ``meta`` in the same transaction."""
        persisted = [(f"evicted.{reason}", n) for reason, n in self.staged.evicted.items()]
        if self.staged.quarantined:
            persisted.append(("quarantined", self.staged.quarantined))
        for key, n in persisted:
            con.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                        "SET value = value + excluded.value", (key, n))

    def _settle(self, jobs: list[Job[Any]]) -> None:
        for job in jobs:
            if job.error is None:
                self._counters.apply(job.delta)
            if job.settle is not None:
                try:
                    job.settle(job.error)
                except Exception as exc:  # noqa: BLE001 - a broken hook must not strand the other callers
                    log.exception("store: settling a job failed")
                    job.error = job.error or exc
        self._counters.publish_gauges()
        _wake(jobs)


def _runs(jobs: list[Job[Any]]) -> list[list[Job[Any]]]:
    """``jobs`` in order, cut into runs of neighbours written by the same ``many`` (a job without one: alone)."""
    runs: list[list[Job[Any]]] = []
    for job in jobs:
        if runs and job.many is not None and runs[-1][-1].many == job.many:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


def fail(jobs: list[Job[Any]], error: BaseException) -> None:
    """End jobs that never ran with ``error``."""
    for job in jobs:
        job.error = error
    _wake(jobs)


def _wake(jobs: list[Job[Any]]) -> None:
    """Hand ended jobs their outcome: one call into each callers' loop, however many jobs."""
    woken: dict[asyncio.AbstractEventLoop, list[Job[Any]]] = {}
    for job in jobs:
        if job.waiter is not None:
            woken.setdefault(job.waiter.get_loop(), []).append(job)
    for loop, waiting in woken.items():
        # A closed loop: its callers are gone, nobody waits for an answer.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(jobs: list[Job[Any]]) -> None:
    """On the callers' loop: hand each its result or error (unless it stopped waiting)."""
    for job in jobs:
        if job.waiter is None or job.waiter.done():
            continue
        if job.error is None:
            job.waiter.set_result(job.result)
        else:
            job.waiter.set_exception(job.error)
