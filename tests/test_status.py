"""Component states (edged.status): one place keeps the state and the ``edged_component_up`` gauge."""

from __future__ import annotations

from edged.metrics import Metrics
from edged.status import Components


def test_components_keep_the_up_gauge() -> None:
    metrics = Metrics()
    components = Components(metrics)

    def up(name: str) -> float | None:
        return metrics.registry.get_sample_value("edged_component_up", {"component": name})

    components.set("mqtt", "starting", "broker:1883")
    assert up("mqtt") == 0
    components.set("mqtt", "connected", "broker:1883")
    assert up("mqtt") == 1
    components.set("dapr", "error", "token rejected")
    assert (up("mqtt"), up("dapr")) == (1, 0)
    components.set("mqtt", "disconnected", "lost")
    assert up("mqtt") == 0
    assert Components().get("mqtt") is None  # without metrics: states only
