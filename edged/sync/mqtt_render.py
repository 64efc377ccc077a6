"""The MQTT message of one event (topic, payload, MQTT 5 properties), for ``edged.sync.mqtt_results``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edged.events import StoredEvent
from edged.mqtt import new_properties

__all__ = ["Rendered", "render"]


@dataclass(frozen=True, slots=True)
class Rendered:
    topic: str
    payload: bytes
    properties: Properties | None


class _PackedOnce(Properties):
    """Properties never changed once built: packed on the first publish only (paho packs them per publish)."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)  # past Properties.__setattr__, which allows only properties
        return packed


def _json_properties() -> Properties:
    props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    return props


#: Those of every JSON event, shared (building and packing them cost more than the JSON encode).
_JSON_PROPERTIES = _json_properties()


def render(event: StoredEvent, *, prefix: str, publish_images: bool, v5: bool) -> Rendered:
    """The MQTT message of one event: results on {prefix}/results/{camera}/{function}, errors on
    {prefix}/errors/{camera}; the JSON event body, or with ``publish_images`` (MQTT 5 only) an image
    result's bytes with the event's identity in user properties."""
    if event.kind == "error":
        topic = f"{prefix}/errors/{event.camera}"
    else:
        topic = f"{prefix}/results/{event.camera}/{event.function}"
    if publish_images and v5 and event.kind == "result" and event.body is not None:
        props = new_properties(PacketTypes.PUBLISH)
        source = event.data.get("source") or {}
        props.ContentType = event.content_type or "application/octet-stream"
        props.UserProperty = [
            ("id", event.id), ("camera", event.camera), ("function", event.function),
            ("sha256", str(source.get("sha256", ""))), ("received_at", str(source.get("received_at", ""))),
            ("latency_ms", str(event.data.get("latency_ms", ""))),
        ]
        if source.get("correlation") is not None:
            props.UserProperty = ("correlation", str(source["correlation"]))
        return Rendered(topic, event.body, props)
    return Rendered(topic, json.dumps(event.data, separators=(",", ":")).encode(), _JSON_PROPERTIES if v5 else None)
