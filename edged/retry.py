"""The one jittered exponential backoff, for every loop that retries (MQTT, result publishing, Dapr).

Jitter keeps many devices that lost the same broker or sidecar from coming back in lock-step. A delay
is drawn from [d/2, d], d = min(cap, first * 2**failures): it still grows, and never exceeds the cap.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "backoff_delay", "jittered"]

_rng = random.Random()  # noqa: S311 - jitter, not secrets
#: Doublings beyond this add nothing (any cap is reached long before) and would overflow a float.
_MAX_DOUBLINGS = 60


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """The delay before retry number ``attempt`` (0 for the first): in [d/2, d], d = min(cap, first*2**attempt)."""
    ceiling = min(cap, first * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return ceiling / 2 + _rng.uniform(0, ceiling / 2)


def jittered(delay: float, spread: float = 0.25) -> float:
    """``delay`` moved by up to ``spread`` of itself either way (a fixed retry period, jittered)."""
    return delay * _rng.uniform(1 - spread, 1 + spread)


class Backoff:
    """Counts failures; ``next()`` is the delay before the next attempt, ``reset()`` after a success."""

    def __init__(self, first: float, cap: float) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, not first={first}, cap={cap}")
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = backoff_delay(self.failures, self.first, self.cap)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
