"""What one MQTT connection tells its user: messages as received, and the connection's events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # paho is imported only where a connection is made (edged.mqtt.connection)
    from paho.mqtt.properties import Properties

__all__ = ["COMPONENT", "RESULTS_COMPONENT", "ConnectionHandler", "Received"]

#: The state of the ingest connection, under this name in /readyz.
COMPONENT = "mqtt"
#: The state of the second connection, which publishes the results.
RESULTS_COMPONENT = "mqtt-results"


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
