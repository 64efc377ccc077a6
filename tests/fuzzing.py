"""Running a property over generated inputs: a short derandomized run in the suite, a long one on demand.

``explore(strategy, check, short=N)`` calls ``check`` on ``N`` inputs drawn by hypothesis, the same ones
every run (``derandomize``), so ``make test`` is repeatable. With ``EDGED_FUZZ_EXAMPLES=M`` in the
environment it draws ``M`` instead, in rounds of ``ROUND`` with a fresh seed each: hypothesis keeps its
search tree for a whole run, and a long run in one piece would mostly slow down re-checking it. A failure
stops the run and hypothesis shrinks it and prints the smallest input it found.

``Tally`` counts what the inputs came to, for the line a run prints at its end.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

__all__ = ["LONG_EXAMPLES", "ROUND", "Tally", "explore", "peak_rss_growth", "reset_peak_rss"]

T = TypeVar("T")

#: Inputs per fuzz test in a long run (``make fuzz``); 0: the short run.
LONG_EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "0"))
ROUND = 5_000


def _round(strategy: st.SearchStrategy[T], check: Callable[[T], None], count: int, round_seed: int | None) -> None:
    @settings(max_examples=count, deadline=None, database=None, derandomize=round_seed is None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy)
    def run(value: T) -> None:
        check(value)

    if round_seed is not None:
        run = seed(round_seed)(run)
    run()


def explore(strategy: st.SearchStrategy[T], check: Callable[[T], None], *, short: int) -> None:
    """``check`` on ``short`` derandomized inputs, or on ``LONG_EXAMPLES`` seeded ones when that is set."""
    if not LONG_EXAMPLES:
        _round(strategy, check, short, None)
        return
    for number in range(-(-LONG_EXAMPLES // ROUND)):
        _round(strategy, check, min(ROUND, LONG_EXAMPLES - number * ROUND), number)


@dataclass
class Tally:
    """How many inputs were tried and what each came to (an outcome name), with the time taken."""

    name: str
    outcomes: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)
    inputs: int = 0

    def add(self, outcome: str, *, new_input: bool = True) -> None:
        """Count ``outcome``; ``new_input=False`` for a second outcome of the same input."""
        self.outcomes[outcome] += 1
        self.inputs += new_input

    def report(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.inputs / elapsed if elapsed else 0.0
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1]))
        return f"{self.name}: {self.inputs} inputs in {elapsed:.1f} s ({rate:.0f}/s): {outcomes}"


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS, which is returned, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss_growth(since: int) -> int:
    """How far the peak RSS rose over ``since`` (a ``reset_peak_rss`` value), in bytes."""
    return _status_kib("VmHWM") * 1024 - since
