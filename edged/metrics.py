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
        self.mqtt_frames = Counter(
            "edged_mqtt_frames",
            "MQTT frames handled, by outcome (processed, duplicate, rejected, quarantined, unrouted).",
            ["outcome"], registry=self.registry,
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

    def on_call(self, function: str, outcome: str, seconds: float) -> None:
        self.calls.labels(function, outcome).inc()
        self.call_seconds.labels(function).observe(seconds)
