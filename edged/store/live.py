"""The live feed of committed events: an in-process broadcaster the Store feeds after each commit.

Runs on the event loop only. Each subscription has a bounded queue of light entries (no image bytes).
One that falls behind is never let to grow: when its queue is full it is emptied and marked ``lagged``,
and its reader catches up from the store by seq (as a Last-Event-ID resume does), so a slow client loses
nothing and costs at most ``queue`` entries. Subscriptions are capped; ``close`` ends them all (shutdown).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from edged.errors import Overloaded
from edged.events import StoredEvent
from edged.store.history import Entry, Query

__all__ = ["QUEUE", "Live", "Subscription"]

#: Entries one subscription holds before it is marked lagged.
QUEUE = 256


class Subscription:
    """One reader of the live feed: the entries matching its query, in the order they were committed."""

    def __init__(self, query: Query, size: int) -> None:
        self.query = query
        self._size = size
        self._queue: deque[Entry] = deque()
        self._wake = asyncio.Event()
        self._lagged = False
        self.closed = False

    def offer(self, entry: Entry) -> None:
        if self.closed or self._lagged or not self.query.matches(entry):
            return
        if len(self._queue) >= self._size:
            self._queue.clear()
            self._lagged = True
        else:
            self._queue.append(entry)
        self._wake.set()

    @property
    def pending(self) -> int:
        """Entries waiting to be read (never more than the queue's size)."""
        return len(self._queue)

    def take_lag(self) -> bool:
        """Whether entries were dropped since the last call (the reader must catch up from the store)."""
        lagged, self._lagged = self._lagged, False
        return lagged

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._wake.set()

    async def next(self) -> Entry | None:
        """The next entry, waiting for one; None when lagged or closed (check which). Callers bound the wait."""
        if not self._queue and not self._lagged and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self._queue and not self._lagged:
            return self._queue.popleft()
        return None


class Live:
    """The broadcaster: ``publish`` after a commit, ``subscribe`` per reader (at most ``max_subscribers``)."""

    def __init__(self, max_subscribers: int, queue: int = QUEUE) -> None:
        self._max = max_subscribers
        self._queue = queue
        self._subs: set[Subscription] = set()
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def pending(self) -> int:
        """Entries held for all subscriptions together."""
        return sum(sub.pending for sub in self._subs)

    @contextmanager
    def subscribe(self, query: Query) -> Iterator[Subscription]:
        """A subscription for the ``with`` block; Overloaded (503) at the cap or once closed."""
        if self._closed:
            raise Overloaded("shutting down")
        if len(self._subs) >= self._max:
            raise Overloaded(f"{self._max} event streams are open already (history.max_streams)")
        sub = Subscription(query, self._queue)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, events: Sequence[StoredEvent]) -> None:
        if not self._subs:
            return
        entries = [Entry.of(e) for e in events]
        for sub in self._subs:
            for entry in entries:
                sub.offer(entry)

    def close(self) -> None:
        """End every subscription and refuse new ones."""
        self._closed = True
        for sub in self._subs:
            sub.close()
