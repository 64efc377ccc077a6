"""Prometheus metrics, one registry per daemon instance (tests boot several in one process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged.versions import versions

__all__ = ["BudgetCollector", "Metrics"]


class _BudgetStats(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def peak(self) -> int: ...
    @property
    def refused(self) -> int: ...


class Budget(Protocol):
    """What the metrics read of the memory budget (edged.budget.MemoryBudget): metrics stay a leaf."""

    def stats(self) -> _BudgetStats: ...


class BudgetCollector(Collector):
    """The memory budget's own counters, read at every scrape (the budget counts; nothing is copied)."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        stats = self._budget.stats()
        for name, doc, value in (
            ("edged_memory_budget_bytes", "Bytes of memory work may reserve (frames, guests, outputs).",
             stats.total),
            ("edged_memory_budget_in_use_bytes", "Bytes reserved now.", stats.in_use),
            ("edged_memory_budget_peak_bytes", "Most bytes reserved at once since start.", stats.peak),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("edged_memory_budget_refused", "Reservations refused: the work did not fit "
                                  "then (503, or an MQTT frame left unacked).", value=stats.refused)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The collectors the default registry has (process_*, python_info, python_gc_*), on ours.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.build_info = Gauge(
            "edged_build_info", "Always 1; the labels say what runs: edged, wasmtime and the TFLite runtime.",
            ["version", "wasmtime", "tflite"], registry=self.registry,
        )
        built = versions()
        self.build_info.labels(built["edged"], built["wasmtime"], built["tflite"]).set(1)
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
        self.http_connections = Gauge(
            "edged_http_connections", "Open HTTP connections being served.", registry=self.registry,
        )
        self.http_refused = Counter(
            "edged_http_refused_connections", "HTTP connections answered 503 at once: http.max_connections reached.",
            registry=self.registry,
        )
        self.http_timeouts = Counter(
            "edged_http_timeouts", "HTTP connections or reads cut short by a timeout, by phase (header, body).",
            ["phase"], registry=self.registry,
        )
        self.component_up = Gauge(
            "edged_component_up", "1 when a component (mqtt, dapr) is connected.", ["component"],
            registry=self.registry,
        )
        self.mqtt_frames = Counter(
            "edged_mqtt_frames",
            "MQTT frames handled, by outcome (processed, duplicate, rejected, quarantined, unrouted).",
            ["outcome"], registry=self.registry,
        )
        self.frames_skipped = Counter(
            "edged_frames_skipped",
            "Frames acked without being processed, by camera and reason (sampled: a newer frame of the camera "
            "replaced it under max_fps). Not counted in edged_mqtt_frames.",
            ["camera", "reason"], registry=self.registry,
        )
        self.mqtt_inflight = Gauge(
            "edged_mqtt_inflight_frames", "MQTT frames taken and not yet acknowledged.", registry=self.registry,
        )
        self.mqtt_retries = Counter(
            "edged_mqtt_retries", "MQTT frames kept unacknowledged and retried, by reason (outbox_full, store).",
            ["reason"], registry=self.registry,
        )
        self.mqtt_quarantined = Counter(
            "edged_mqtt_quarantined", "MQTT frames set aside (an error event, acked) after mqtt.max_attempts crashes.",
            registry=self.registry,
        )
        self.mqtt_published = Counter(
            "edged_mqtt_published", "Result messages the broker acknowledged (ok) or refused.", ["outcome"],
            registry=self.registry,
        )
        self.outbox_events = Gauge(
            "edged_outbox_events", "Events in the cloud outbox, by state (queued, dead).", ["state"],
            registry=self.registry,
        )
        self.outbox_bytes = Gauge(
            "edged_outbox_bytes", "Bytes of CloudEvents in the outbox (queued and dead).", registry=self.registry,
        )
        self.outbox_evicted = Counter(
            "edged_outbox_evicted", "Outbox events dropped unsent, by reason (max_bytes, max_age, oversize).",
            ["reason"], registry=self.registry,
        )
        self.outbox_rejected = Counter(
            "edged_outbox_rejected", "Inputs refused because the outbox was full (on_full = reject_new).",
            registry=self.registry,
        )
        self.sync_events = Counter(
            "edged_sync_events", "Outbox events handled by the cloud sync, by outcome (published, retry, dead).",
            ["outcome"], registry=self.registry,
        )
        self.sync_last_success = Gauge(
            "edged_sync_last_success_timestamp_seconds", "Unix time of the last event the sidecar accepted.",
            registry=self.registry,
        )

    def watch_budget(self, budget: Budget) -> None:
        """Export ``budget``'s bytes in use, peak and refusals."""
        self.registry.register(BudgetCollector(budget))

    def on_call(self, function: str, outcome: str, seconds: float) -> None:
        self.calls.labels(function, outcome).inc()
        self.call_seconds.labels(function).observe(seconds)
