"""Automatic rollback: watches the first calls of each new API version, on the pool's worker threads.

The pool reports every call's outcome with the settings of the version that ran it (``watch_outcomes``),
so a call begun before a swap counts for the old version, not the new one. A new version whose first
``after`` calls all fail (FAILING: the crash codes of edged.errors) is reported for rollback; its first
success is reported once, so the registry can remember that the version worked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from edged.errors import BadOutput, FunctionTimeout, FunctionTrap, MemoryLimit
from edged.settings import FunctionSettings

__all__ = ["FAILING", "Report", "RollbackWatch"]

#: Outcomes that count against a new version: it crashed, ran away, or answered garbage. A guest's own
#: error result (function_error) is the function working as written and ends the watch.
FAILING = frozenset({FunctionTrap.code, BadOutput.code, FunctionTimeout.code, MemoryLimit.code})


@dataclass(frozen=True)
class Report:
    """``kind`` "failed" (roll ``version`` of ``function`` back; ``detail`` says why) or "succeeded"."""

    kind: str
    function: str
    version: int
    detail: str = ""


@dataclass
class _Running:
    settings: FunctionSettings
    version: int
    succeeded: bool
    watched: int  # calls still to watch; 0 when not watching
    outcomes: list[str]


class RollbackWatch:
    """The running version of each API function and how its first calls went; ``report`` is called (on
    a worker thread) with each Report."""

    def __init__(self, after: int, report: Callable[[Report], None]) -> None:
        self._after = after
        self._report = report
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}

    def track(self, name: str, settings: FunctionSettings, version: int, *, succeeded: bool,
              watch: bool) -> None:
        """``version`` of ``name`` now runs; with ``watch``, its first calls decide a rollback."""
        with self._lock:
            self._running[name] = _Running(settings, version, succeeded, self._after if watch else 0, [])

    def forget(self, name: str) -> None:
        with self._lock:
            self._running.pop(name, None)

    def succeeded(self, name: str, version: int) -> bool:
        """Whether a call of ``version`` of ``name`` succeeded since it was tracked."""
        with self._lock:
            running = self._running.get(name)
            return running is not None and running.version == version and running.succeeded

    def on_outcome(self, name: str, settings: FunctionSettings, outcome: str) -> None:
        """The pool's hook, on a worker thread, after every call."""
        report = None
        with self._lock:
            running = self._running.get(name)
            if running is None or running.settings != settings:
                return  # a config function, or a call of a version no longer running
            if outcome == "ok" and not running.succeeded:
                running.succeeded = True
                report = Report("succeeded", name, running.version)
            if running.watched:
                if outcome not in FAILING:
                    running.watched = 0
                else:
                    running.outcomes.append(outcome)
                    if len(running.outcomes) >= running.watched:
                        running.watched = 0
                        report = Report("failed", name, running.version,
                                        f"its first {len(running.outcomes)} calls failed "
                                        f"({', '.join(sorted(set(running.outcomes)))})")
        if report is not None:
            self._report(report)
