"""Prometheus metrics, one registry per daemon instance (tests boot several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "edged_function_calls", "Function calls by outcome (ok or an error code).",
            ["function", "outcome"], registry=self.registry,
        )
        self.call_seconds = Histogram(
            "edged_function_call_seconds", "Wall time of a function call, queueing excluded.",
            ["function"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rejected = Counter(
            "edged_rejected_inputs", "Inputs refused before reaching a function, by source and code.",
            ["source", "code"], registry=self.registry,
        )
        self.overloaded = Counter(
            "edged_overloaded", "Requests refused because the pool was full.", ["source"],
            registry=self.registry,
        )
        self.component_up = Gauge(
            "edged_component_up", "1 when a component (mqtt, dapr) is connected.", ["component"],
            registry=self.registry,
        )

    def on_call(self, function: str, outcome: str, seconds: float) -> None:
        self.calls.labels(function, outcome).inc()
        self.call_seconds.labels(function).observe(seconds)
