"""The MQTT connection (paho on the loop, reconnect, generations); ingest and result publishing use it.

``MqttConnection`` and ``new_properties`` are imported on first use: with ``[mqtt] enabled = false`` a
start never imports paho (2-3 % of the daemon's imports, measured with ``python -X importtime``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edged.mqtt.handler import COMPONENT, RESULTS_COMPONENT, ConnectionHandler, Received

if TYPE_CHECKING:
    from edged.mqtt.connection import MqttConnection
    from edged.mqtt.options import new_properties

__all__ = ["COMPONENT", "RESULTS_COMPONENT", "ConnectionHandler", "MqttConnection", "Received", "new_properties"]

_LAZY = {"MqttConnection": "edged.mqtt.connection", "new_properties": "edged.mqtt.options"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
