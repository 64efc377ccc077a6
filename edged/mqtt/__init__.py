"""The MQTT connection (paho on the loop, reconnect, generations); ingest and result publishing use it."""

from __future__ import annotations

from edged.mqtt.connection import COMPONENT, RESULTS_COMPONENT, MqttConnection
from edged.mqtt.handler import ConnectionHandler, Received
from edged.mqtt.options import new_properties

__all__ = ["COMPONENT", "RESULTS_COMPONENT", "ConnectionHandler", "MqttConnection", "Received", "new_properties"]
