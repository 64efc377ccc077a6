"""What the pool tells about its functions: calls, errors by code and latency, and their settings."""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from edged.settings import FunctionSettings

__all__ = ["LATENCY_WINDOW", "FunctionStats", "describe_function"]

#: Recent calls per function kept for the latency percentiles.
LATENCY_WINDOW = 1024


class FunctionStats:
    """Calls, errors by code and latency of one function; updated from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.errors: dict[str, int] = {}
        self._sum = 0.0
        self._last = 0.0
        self._recent: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self.calls += 1
            if outcome != "ok":
                self.errors[outcome] = self.errors.get(outcome, 0) + 1
            self._sum += seconds
            self._last = seconds
            self._recent.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            recent = sorted(self._recent)
            calls, errors, total, last = self.calls, dict(self.errors), self._sum, self._last

        def pct(q: float) -> float | None:
            if not recent:
                return None
            return round(recent[min(len(recent) - 1, math.ceil(q * len(recent)) - 1)] * 1000, 3)

        return {
            "calls": calls,
            "errors": errors,
            "latency": {
                "count": calls, "sum_ms": round(total * 1000, 3), "last_ms": round(last * 1000, 3),
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "window": len(recent),
            },
        }


def describe_function(name: str, fn: FunctionSettings, stats: FunctionStats) -> dict[str, Any]:
    """Name, ABI, input, limits, grants, calls, errors and latency of one function."""
    return {
        "name": name,
        "abi": fn.abi,
        "input": fn.input,
        "module": str(fn.module),
        "limits": {"timeout_ms": fn.timeout_ms, "memory_mb": fn.memory_mb,
                   "max_output_bytes": fn.max_output_bytes},
        "grants": {
            "preopens": [{"host": str(p.host), "guest": p.guest, "writable": p.writable} for p in fn.preopens],
            "allowed_hosts": list(fn.allowed_hosts),
            "models": list(fn.models),
            "allow_model_bytes": fn.allow_model_bytes,
            "log": fn.log,
        },
        **stats.snapshot(),
    }
