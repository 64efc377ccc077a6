"""What a function pool holds and shows: its function table, counters, engine and worker files.

``edged.wasm.pool.FunctionPool`` runs calls on top of this; the split keeps admission and calls in one
module and the state plus its read-only views (for /v1/functions, /metrics, tests) in this one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.engine import CacheStats, WasmEngine
from edged.wasm.runner import FunctionRunner
from edged.wasm.stats import FunctionStats, describe_function
from edged.wasm.table import FunctionTable
from edged.wasm.ticker import Ticker, WorkerFiles

__all__ = ["OnCall", "OnOutcome", "PoolState"]

log = logging.getLogger(__name__)

#: ``on_call(function, outcome, seconds)``: outcome is "ok" or an error code; called on the worker thread.
OnCall = Callable[[str, str, float], None]
#: ``on_outcome(function, settings, outcome)``: as OnCall, with the settings of the version that ran.
OnOutcome = Callable[[str, FunctionSettings, str], None]


class PoolState:
    """The table new calls use, the admission counters (under ``_lock``), the engine while running, and
    what each call's outcome is told to (per-function stats, ``on_call``, the outcome watcher)."""

    def __init__(self, functions: Mapping[str, FunctionSettings], pool: PoolSettings,
                 on_call: OnCall | None = None) -> None:
        self._on_call = on_call
        self._on_outcome: OnOutcome | None = None
        self._table = FunctionTable(functions, {})
        self._settings = pool
        self._capacity = pool.workers + pool.queue
        self._stats = {name: FunctionStats() for name in functions}
        self._lock = threading.Lock()
        #: Notified when the last admitted job is released (close waits for it).
        self._settled = threading.Condition(self._lock)
        self._admitted = 0
        self._executing = 0
        self._overloaded = 0
        self._engine: WasmEngine | None = None
        self._files = WorkerFiles()
        self._ticker = Ticker(self._files.watch)

    @property
    def scratch_root(self) -> Path | None:
        return self._files.root  # the workers' stdio files, while the pool runs

    @property
    def capacity(self) -> int:
        """Calls and decodes admitted at most (running plus waiting)."""
        return self._capacity

    @property
    def in_flight(self) -> int:
        """Jobs admitted and not finished: running plus waiting."""
        with self._lock:
            return self._admitted

    @property
    def running(self) -> int:
        """Jobs running now (each holds one of the ``workers`` permits)."""
        with self._lock:
            return self._executing

    @property
    def overloaded(self) -> int:
        """Calls and decodes refused with Overloaded so far."""
        with self._lock:
            return self._overloaded

    @property
    def allocator(self) -> str | None:
        """"pooling" (instance slots reused, zeroed between calls) or "on-demand"; None before start."""
        if self._engine is None:
            return None
        return "pooling" if self._engine.pooling else "on-demand"

    @property
    def cache_stats(self) -> CacheStats | None:
        """How modules were loaded at start (from the compiled cache or compiled), None before start."""
        return self._engine.stats if self._engine is not None else None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per function: calls, errors by code, latency (count, sum, last, p50 and p99 of recent calls)."""
        return {name: self._stats[name].snapshot() for name in self._table.functions}

    def describe(self) -> list[dict[str, Any]]:
        """Per function: name, ABI, input, limits, grants, calls, errors and latency."""
        return [describe_function(name, fn, self._stats[name]) for name, fn in self._table.functions.items()]

    def has(self, name: str) -> bool:
        """Whether new calls to ``name`` find a function (the current table)."""
        return name in self._table.functions

    @property
    def ticker_parked(self) -> bool:
        """The epoch ticker is waiting for work, not ticking."""
        return self._ticker.parked

    def watch_outcomes(self, hook: OnOutcome) -> None:
        """Call ``hook`` after every call (on the worker thread), with the settings of the version that ran:
        a call that started before a swap reports the old version's."""
        self._on_outcome = hook

    def _record(self, runner: FunctionRunner, outcome: str, seconds: float) -> None:
        name = runner.name
        self._stats[name].record(outcome, seconds)
        try:
            if self._on_call is not None:
                self._on_call(name, outcome, seconds)
            if self._on_outcome is not None:
                self._on_outcome(name, runner.settings, outcome)
        except Exception:
            log.exception("on_call hook failed")
