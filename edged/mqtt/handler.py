"""What one MQTT connection tells its user: messages as received, and the connection's events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from paho.mqtt.properties import Properties

__all__ = ["ConnectionHandler", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    """A PUBLISH as delivered by the broker, tagged with the connection generation that delivered it."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    properties: Properties | None
    generation: int
    received_at: float


class ConnectionHandler(Protocol):
    """What the connection's user is told; every method is called on the loop thread and must not raise."""

    def on_connected(self, generation: int, session_present: bool) -> None: ...

    def on_disconnected(self) -> None: ...

    def on_message(self, message: Received) -> None: ...

    def on_published(self, mid: int, ok: bool, reason: str) -> None: ...
