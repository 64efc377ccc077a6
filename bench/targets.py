"""Issue 14's targets, each read from one benchmark's results (see bench/report.py for their shape).

A figure comes from a bench's ``--json`` (``results[name]["json"]``) where it has one; outbox_bench has
none, so its printed lines are read back (``results[name]["stdout"]``; ``tables()`` and ``cell()`` read a
bench's markdown tables the same way). A figure that is missing (a bench failed or was
skipped) yields a row with no measurement, never an exception.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "cell", "evaluate", "number", "tables"]

Results = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Target:
    figure: str
    target: str
    #: "<=" or ">=" against ``limit``
    op: str
    limit: float
    unit: str
    measure: Callable[[Results], float | None]

    def row(self, results: Results) -> tuple[str, str, str, str]:
        try:
            value = self.measure(results)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, statistics.StatisticsError):
            value = None
        if value is None:
            return self.figure, "not measured", self.target, "?"
        met = value <= self.limit if self.op == "<=" else value >= self.limit
        shown = f"{value:.2f}{self.unit}" if abs(value) < 100 else f"{value:,.0f}{self.unit}"
        return self.figure, shown, self.target, "yes" if met else "**no**"


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables in a bench's output, keyed by the heading above each (``## ...``), rows as dicts."""
    found: dict[str, list[dict[str, str]]] = {}
    heading = ""
    header: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                found.setdefault(heading, [])
            elif not all(set(c) <= set("-: ") for c in cells):
                found[heading].append(dict(zip(header, cells, strict=False)))
        else:
            header = None
    return found


def number(text: str) -> float:
    """The first number in a cell or line ("1,234.5 µs" -> 1234.5)."""
    match = re.search(r"-?\d[\d,]*\.?\d*", text)
    if match is None:
        raise ValueError(f"no number in {text!r}")
    return float(match.group().replace(",", ""))


def cell(results: Results, bench: str, heading: str, label: str, column: str) -> float:
    """A number from bench ``bench``'s printed tables: the first table whose heading starts with ``heading``,
    the row whose first cell starts with ``label``."""
    for title, rows in tables(results[bench]["stdout"]).items():
        if title.startswith(heading):
            for row in rows:
                if next(iter(row.values())).startswith(label):
                    return number(row[column])
    raise KeyError(f"{bench}: {heading} / {label}")


def _classify(results: Results, mode: str, base: str) -> float:
    figures = results["classify"]["json"]
    return float(figures[f"{mode}/1"]["p50_ms"]) / float(figures[f"{base}/1"]["p50_ms"])


def _gray_http(results: Results) -> float:
    return float(results["gray_http"]["json"]["http_grayscale_edged_over_native"])


def _noop(results: Results, key: str) -> float:
    return float(results["pool"]["json"]["noop"][key])


def _noop_ratio(results: Results) -> float:
    return _noop(results, "process_per_request_p50_ms") / _noop(results, "whole_call_p50_ms")


def _outbox_amortised(results: Results) -> float:
    """outbox_bench's every-camera-at-once line: wall time of the whole fill over the results (group commit)."""
    for line in results["outbox"]["stdout"].splitlines():
        if "write cost" in line and "cameras at once, amortised" in line:
            return number(line.split(")", 1)[1])
    raise KeyError("outbox write cost, cameras at once")


def _median(results: Results, bench: str, key: str) -> float:
    return statistics.median(results[bench]["json"][key])


TARGETS = (
    Target("classify over HTTP, p50, vs the same model behind a plain aiohttp server (1 worker)", "≤ 1.10×", "<=",
           1.10, "×", lambda r: _classify(r, "http", "native-http")),
    Target("classify through `edged invoke`, p50, vs native Python + TFLite (1 worker)", "≤ 1.05×", "<=", 1.05, "×",
           lambda r: _classify(r, "invoke", "native")),
    Target("grayscale HTTP throughput vs a native Pillow server (PNG at zlib level 1)", "≥ 0.85×", ">=", 0.85, "×",
           _gray_http),
    Target("outbox write cost per result, 8 cameras at once (amortised: the fill's wall time / results)",
           "≤ 100 µs amortised", "<=", 100, " µs", _outbox_amortised),
    Target("RSS, idle, both functions and the model loaded", "≤ 130 MB", "<=", 130, " MB",
           lambda r: _median(r, "start", "idle_rss_mb")),
    Target("whole no-op call vs a process per request (wasmtime CLI), p50", "≥ 40×", ">=", 40, "×", _noop_ratio),
    Target("fresh-instance cost in the worker (no-op, in the sandbox), p50", "≤ 0.08 ms", "<=", 0.08, " ms",
           lambda r: _noop(r, "in_sandbox_p50_ms")),
    Target("start to `/readyz` 200, warm module cache, x86_64", "≤ 1.0 s", "<=",
           1.0, " s", lambda r: _median(r, "start", "warm_s")),
    # Only where make cross-test's arm64 rootfs exists (bench/start_aarch64.py); the start section says why not.
    Target("start to `/readyz` 200, warm module cache, emulated aarch64 (qemu-user; see the start section)",
           "≤ 1.0 s", "<=", 1.0, " s", lambda r: statistics.median(r["start"]["json"]["aarch64"]["warm_s"])),
    # Not in the table but in its text: MQTT with both functions against a native pipeline.
    Target("MQTT frames/s, both functions, vs a native paho + Pillow + TFLite pipeline, zero loss", "≥ 0.8×", ">=",
           0.8, "×", lambda r: float(r["mqtt_pipeline"]["json"]["ratio"])
           if not (r["mqtt_pipeline"]["json"]["edged"]["lost"] or r["mqtt_pipeline"]["json"]["native"]["lost"])
           else None),
)


def evaluate(results: Results) -> list[tuple[str, str, str, str]]:
    return [t.row(results) for t in TARGETS]
