"""The process's memory budget: one byte-counting admission gate for all large work.

Work that needs a lot of host memory (a decoded frame, a request body, a guest's memory, an output copy)
reserves its bytes first and releases them when done. The policy belongs to the caller:

- ``fits_ever(n)`` is False: the work can never run here -> 422 (``too_many_pixels``, ``too_large``);
- ``try_reserve(n)`` returns None: it would fit later -> 503 with ``Retry-After`` over HTTP, no ack over
  MQTT (the broker redelivers);
- otherwise the Reservation is released when the memory is freed (``release()`` is idempotent, and a
  Reservation is a context manager).

Reservations are made on the event loop and released from worker threads, so the counters sit behind a
lock; no call blocks except ``reserve(n, timeout)``, meant for worker threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

from edged.cgroup_limit import detect_memory_limit, mem_total
from edged.settings.base import MiB
from edged.settings.limits import LimitsSettings

__all__ = [
    "MIN_WORK_BYTES",
    "RAM_SHARE",
    "BudgetStats",
    "MemoryBudget",
    "Reservation",
    "detect_memory_limit",
    "budget_origin",
    "detect_work_budget",
    "work_budget_bytes",
]

#: Without a cgroup limit (or ``[limits] memory_mb``), edged takes this share of the machine's RAM.
RAM_SHARE = 0.5
#: The smallest work budget: a limit below ``reserve_mb`` still lets a small frame through.
MIN_WORK_BYTES = 16 * MiB
_FALLBACK_TOTAL = 1024 * MiB  # neither a cgroup limit nor /proc/meminfo: a small device


def work_budget_bytes(limits: LimitsSettings, *, cgroup_limit: int | None, ram: int | None) -> int:
    """Bytes work may reserve: the memory edged may use less what it needs idle (``reserve_mb``).

    The memory edged may use is ``limits.memory_mb`` if set, else ``cgroup_limit`` (bytes) if there is
    one, else ``RAM_SHARE`` of ``ram`` (bytes; a 1 GiB device when unknown). Never below MIN_WORK_BYTES.
    """
    if limits.memory_mb is not None:
        total = limits.memory_mb * MiB
    elif cgroup_limit is not None:
        total = cgroup_limit
    else:
        total = int((ram or _FALLBACK_TOTAL) * RAM_SHARE)
    return max(total - limits.reserve_mb * MiB, MIN_WORK_BYTES)


def budget_origin(limits: LimitsSettings, *, cgroup_limit: int | None) -> str:
    """Where ``work_budget_bytes`` took the memory edged may use from, for the start-up log."""
    if limits.memory_mb is not None:
        return f"[limits] memory_mb = {limits.memory_mb}"
    if cgroup_limit is not None:
        return f"the cgroup memory limit ({cgroup_limit // MiB} MiB)"
    return f"{RAM_SHARE:.0%} of the RAM"


def detect_work_budget(limits: LimitsSettings) -> int:
    """``work_budget_bytes`` with this process's cgroup limit and this machine's RAM."""
    return work_budget_bytes(limits, cgroup_limit=detect_memory_limit(), ram=mem_total())


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """Counters for metrics: bytes in use now and at most, reservations admitted and refused."""

    total: int
    in_use: int
    peak: int
    admitted: int
    refused: int


class Reservation:
    """Bytes held in a MemoryBudget until ``release()`` (idempotent, from any thread)."""

    __slots__ = ("_budget", "_nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget: MemoryBudget | None = budget
        self._nbytes = nbytes

    @property
    def nbytes(self) -> int:
        """Bytes held now (0 once released)."""
        return self._nbytes if self._budget is not None else 0

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` (fewer than held), e.g. the frame's pixels once decoding is over."""
        budget = self._budget
        if budget is not None and 0 <= nbytes < self._nbytes:
            budget._give_back(self._nbytes - nbytes)  # noqa: SLF001 (the budget's own counter)
            self._nbytes = nbytes

    def release(self) -> None:
        """Give the bytes back; later calls do nothing."""
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self._nbytes)  # noqa: SLF001

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Reservation({self.nbytes} bytes)"


class MemoryBudget:
    """``total`` bytes that reservations share; thread-safe."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError(f"a memory budget needs a positive total, not {total}")
        self.total = total
        self._in_use = self._peak = self._admitted = self._refused = 0
        # The quick paths take the lock itself (Condition's own enter/exit are Python frames).
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        #: Threads in ``reserve`` waiting for bytes: a give-back wakes them only when there are some.
        self._waiting = 0

    def fits_ever(self, nbytes: int) -> bool:
        """Whether ``nbytes`` could be reserved with nothing else running."""
        return 0 <= nbytes <= self.total

    def try_reserve(self, nbytes: int) -> Reservation | None:
        """Reserve ``nbytes`` now, or return None (counted as refused) if they do not fit now."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve {nbytes} bytes")
        with self._lock:
            return self._take(nbytes, count_refusal=True)

    def reserve(self, nbytes: int, timeout: float) -> Reservation | None:
        """Wait up to ``timeout`` seconds for ``nbytes`` to fit (worker threads only); None if they never did."""
        if not self.fits_ever(nbytes):
            raise ValueError(f"{nbytes} bytes can never fit in a budget of {self.total}")
        deadline = time.monotonic() + timeout
        with self._freed:
            while True:
                taken = self._take(nbytes, count_refusal=False)
                remaining = deadline - time.monotonic()
                if taken is not None or remaining <= 0:
                    if taken is None:
                        self._refused += 1
                    return taken
                self._waiting += 1
                try:
                    self._freed.wait(remaining)
                finally:
                    self._waiting -= 1

    def stats(self) -> BudgetStats:
        with self._freed:
            return BudgetStats(self.total, self._in_use, self._peak, self._admitted, self._refused)

    def _take(self, nbytes: int, *, count_refusal: bool) -> Reservation | None:
        if self._in_use + nbytes > self.total:
            if count_refusal:
                self._refused += 1
            return None
        self._in_use += nbytes
        self._peak = max(self._peak, self._in_use)
        self._admitted += 1
        return Reservation(self, nbytes)

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self._in_use -= nbytes
            if self._waiting:
                self._freed.notify_all()
