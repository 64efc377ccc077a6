"""What the store keeps counted in memory: queue depth, dead letters, bytes held, evictions by reason.

Counters change only through a ``Delta`` applied after its transaction committed, so they never count
rows a rolled-back job would have written. They are touched on the writer thread only and read
anywhere (ints are atomic). Evictions are logged at once, then summed up at most every
``EVICTION_LOG_EVERY`` seconds, so none goes unlogged.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from edged.metrics import Metrics
from edged.settings import OutboxSettings
from edged.store.codec import ROW_COST, SIZE_SQL

__all__ = ["DEAD", "QUEUED", "Counters", "Delta"]

log = logging.getLogger(__name__)

QUEUED, DEAD = 0, 1
#: Evictions are logged at once, then summed up at most this often (seconds).
EVICTION_LOG_EVERY = 10.0
#: The commit rate is the results committed over this many recent seconds, counted in ``RATE_BUCKET``s.
RATE_WINDOW = 600.0
RATE_BUCKET = 10.0


@dataclass(slots=True)
class Delta:
    """Counter changes of one transaction, applied only once it committed."""

    queued: int = 0
    dead: int = 0
    outbox_bytes: int = 0
    events: int = 0
    events_bytes: int = 0
    committed: int = 0
    evicted: dict[str, int] = field(default_factory=dict)
    evicted_ids: list[str] = field(default_factory=list)
    quarantined: int = 0
    #: Rows that bound the space left were deleted or changed (a refused commit may pass now).
    freed: bool = False

    def add(self, other: Delta) -> None:
        """Sum ``other`` into this one (the jobs of a shared transaction, edged.store.group)."""
        self.queued += other.queued
        self.dead += other.dead
        self.outbox_bytes += other.outbox_bytes
        self.events += other.events
        self.events_bytes += other.events_bytes
        self.committed += other.committed
        for reason, n in other.evicted.items():
            self.evict(reason, n)
        self.quarantined += other.quarantined
        self.freed = self.freed or other.freed

    def evict(self, reason: str, n: int, ids: Sequence[str] = ()) -> None:
        if n:
            self.evicted[reason] = self.evicted.get(reason, 0) + n
            self.evicted_ids.extend(ids)

    def event_gone(self, size: int) -> None:
        """One events row of ``size`` bytes was deleted."""
        self.freed = True
        self.events -= 1
        self.events_bytes -= size

    def outbox_gone(self, size: int, state: int) -> None:
        """The outbox row of an event of ``size`` bytes, in ``state``, was deleted."""
        self.freed = True
        self.outbox_bytes -= size
        if state == QUEUED:
            self.queued -= 1
        else:
            self.dead -= 1


class Counters:
    """The in-memory totals, the eviction log and the outbox gauges."""

    def __init__(self, outbox: OutboxSettings, metrics: Metrics | None) -> None:
        self.outbox = outbox
        self._metrics = metrics
        self.queued = 0
        self.dead = 0
        self.outbox_bytes = 0
        self.events = 0
        self.events_bytes = 0
        self.evicted_total = 0
        self.evicted_by_reason: dict[str, int] = {}
        self.quarantined = 0
        #: The last commit was refused (reject_new) and nothing was freed since.
        self.rejecting = False
        self._unlogged: dict[str, int] = {}
        self._next_eviction_log = 0.0
        self._started = time.monotonic()
        self._commits: deque[list[float]] = deque()  # [bucket start, results]
        #: Write transactions committed (one fsync each) and the jobs they committed (group commit).
        self.transactions = 0
        self.jobs_committed = 0

    def load(self, db: sqlite3.Connection) -> None:
        """Read the totals of an opened database."""
        self.queued = self.dead = self.outbox_bytes = 0
        for state, n, size in db.execute(f"SELECT o.state, COUNT(*), COALESCE(SUM({SIZE_SQL}), 0) "  # noqa: S608
                                         "FROM outbox o JOIN events e ON e.seq = o.seq GROUP BY o.state"):
            if state == QUEUED:
                self.queued = n
            else:
                self.dead = n
            self.outbox_bytes += size
        self.events, self.events_bytes = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM({SIZE_SQL}), 0) FROM events e").fetchone()  # noqa: S608
        self.evicted_by_reason = {key.removeprefix("evicted."): int(value) for key, value in
                                  db.execute("SELECT key, value FROM meta WHERE key LIKE 'evicted.%'")}
        self.evicted_total = sum(self.evicted_by_reason.values())
        row = db.execute("SELECT value FROM meta WHERE key = 'quarantined'").fetchone()
        self.quarantined = int(row[0]) if row is not None else 0
        self.rejecting = False
        self.publish_gauges()

    @property
    def full(self) -> bool:
        """A new result would certainly be refused: on_full is reject_new, and the last commit was refused
        with nothing freed since, or the outbox alone leaves no room for the smallest result."""
        if self.outbox.on_full != "reject_new":
            return False
        return self.rejecting or self.outbox_bytes + ROW_COST >= self.outbox.max_bytes

    def refused(self) -> None:
        """A commit was refused for space (writer thread)."""
        self.rejecting = True

    @property
    def used(self) -> int:
        """Bytes of event data held (each result once), as counted against outbox.max_bytes."""
        return self.events_bytes

    def rate(self) -> float:
        """Results committed per second over the last ``RATE_WINDOW`` seconds (or since the store opened)."""
        now = time.monotonic()
        self._forget(now)
        span = min(RATE_WINDOW, now - self._started)
        return sum(n for _, n in self._commits) / span if span > 0 else 0.0

    def _forget(self, now: float) -> None:
        while self._commits and self._commits[0][0] < now - RATE_WINDOW:
            self._commits.popleft()

    def _count_commit(self, n: int) -> None:
        now = time.monotonic()
        if self._commits and self._commits[-1][0] > now - RATE_BUCKET:
            self._commits[-1][1] += n
        else:
            self._commits.append([now, n])
            self._forget(now)

    def transaction_committed(self, jobs: int) -> None:
        """A write transaction committed ``jobs`` jobs (edged.store.group)."""
        self.transactions += 1
        self.jobs_committed += jobs
        if self._metrics is not None:
            self._metrics.store_transactions.inc()
            self._metrics.store_commits.inc(jobs)

    def apply(self, delta: Delta) -> None:
        """Count a committed job's changes. The gauges are left to ``publish_gauges``, called once for all
        the jobs of a transaction (each gauge update takes a lock)."""
        self.flush_eviction_log()
        if delta.committed:
            self._count_commit(delta.committed)
        if delta.committed or delta.freed:
            self.rejecting = False
        if delta.quarantined:
            self.quarantined += delta.quarantined
            if self._metrics is not None:
                self._metrics.mqtt_quarantined.inc(delta.quarantined)
        self.queued += delta.queued
        self.dead += delta.dead
        self.outbox_bytes += delta.outbox_bytes
        self.events += delta.events
        self.events_bytes += delta.events_bytes
        for reason, n in delta.evicted.items():
            self.evicted_by_reason[reason] = self.evicted_by_reason.get(reason, 0) + n
            self.evicted_total += n
            self._unlogged[reason] = self._unlogged.get(reason, 0) + n
            if self._metrics is not None:
                self._metrics.outbox_evicted.labels(reason).inc(n)
        if delta.evicted:
            self.flush_eviction_log(first_ids=delta.evicted_ids)

    def flush_eviction_log(self, first_ids: Sequence[str] = (), force: bool = False) -> None:
        now = time.monotonic()
        if not self._unlogged or (now < self._next_eviction_log and not force):
            return
        summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._unlogged.items()))
        sample = f", e.g. {', '.join(first_ids[:3])}" if first_ids else ""
        log.warning("outbox: evicted %d events unsent (%s%s); %d evicted in total (max_bytes=%d, max_age=%ss, "
                    "on_full=%s)", sum(self._unlogged.values()), summary, sample, self.evicted_total,
                    self.outbox.max_bytes, self.outbox.max_age, self.outbox.on_full)
        self._unlogged.clear()
        self._next_eviction_log = now + EVICTION_LOG_EVERY

    def publish_gauges(self) -> None:
        if self._metrics is None:
            return
        self._metrics.outbox_events.labels("queued").set(self.queued)
        self._metrics.outbox_events.labels("dead").set(self.dead)
        self._metrics.outbox_bytes.set(self.outbox_bytes)
