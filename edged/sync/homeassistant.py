"""Home Assistant MQTT discovery: one device per camera, announced from the results being published.

The result publisher (``edged.sync.mqtt_results``) tells ``Discovery`` about each result it publishes
(``seen``), about every new connection (``republish``) and about messages on Home Assistant's status
topic (``birth``); ``take`` hands back what to publish next: device configs first, then states, the
newest state per topic only (a backlog coalesces). All of it goes out retained at QoS 1 on the results
connection, best effort: it is not tracked in the store, and it is all published again after a
reconnect or Home Assistant's birth message, so a late or restarted Home Assistant sees everything.

A camera's device (``{discovery_prefix}/device/{id}/config``) has these components:
- ``last_result``: a timestamp sensor, the time of the camera's latest result;
- ``latency``: a diagnostic sensor, that result's latency in ms;
- ``{function}_label``: a sensor per function whose results carry a string ``label`` (the first such
  result adds it): the label is the state, the whole result (confidence, top 5, model) its attributes;
- ``{function}_image``: an image entity per function with image results, when images are published
  (``mqtt.publish_images`` on MQTT 5). Its ``image_topic`` is the results topic itself, so no image is
  sent twice; as results are not retained, Home Assistant shows the next image after it starts.
Components are only ever added (a function's first qualifying result re-publishes the config).
Availability is edged's own ``{prefix}/status`` (retained ``online``, ``offline`` at stop and as last will).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from edged.events import StoredEvent, rfc3339
from edged.settings import MqttSettings

__all__ = ["Announcement", "Discovery", "object_id"]

log = logging.getLogger(__name__)

_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def object_id(*parts: str) -> str:
    """An id Home Assistant accepts (``[a-zA-Z0-9_-]``) made of ``parts``; when characters had to be
    replaced, a hash of the original keeps two cameras like ``cam.1`` and ``cam_1`` apart."""
    raw = "_".join(parts)
    clean = _NOT_ID.sub("_", raw)
    if clean != raw:
        clean += "_" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return clean


@dataclass(frozen=True, slots=True)
class Announcement:
    """One retained message to publish."""

    topic: str
    payload: bytes


@dataclass(slots=True)
class _Camera:
    name: str
    id: str
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The latest state per state topic, published again on a new connection or a birth message.
    states: dict[str, bytes] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Discovery:
    """Which cameras and components Home Assistant was told about, and what is still to publish."""

    def __init__(self, settings: MqttSettings, device_id: str, version: str) -> None:
        self._settings = settings.homeassistant
        self._prefix = settings.prefix
        self._device_id = device_id
        self._version = version
        self._availability = f"{settings.prefix}/status"
        #: Image results arrive as bytes on the results topic only with MQTT 5 (see mqtt_render.render).
        self._images = settings.publish_images and settings.protocol == "5"
        self.birth_topic = f"{self._settings.discovery_prefix}/status"
        self._cameras: dict[str, _Camera] = {}
        self._configs: dict[str, None] = {}  # cameras whose config is due, in order
        self._states: dict[str, bytes] = {}  # state topic -> newest payload not yet published
        self._full = False

    # -- what the publisher reports ------------------------------------------------------------------------

    def seen(self, event: StoredEvent, topic: str) -> None:
        """A result of ``event.camera`` was published on ``topic``: add components, note the new states."""
        if event.kind != "result":
            return
        camera = self._camera(event.camera)
        if camera is None:
            return
        fn = event.function
        before = len(camera.components)
        if not camera.components:
            camera.components.update(self._camera_components(camera))
        result = event.data.get("result")
        if isinstance(result, dict) and isinstance(result.get("label"), str):
            if f"{fn}_label" not in camera.components:
                camera.components[f"{fn}_label"] = self._label_component(camera, fn)
            self._state(camera, self._state_topic(camera, fn), _json(result))
        elif event.body is not None and self._images and f"{fn}_image" not in camera.components:
            camera.components[f"{fn}_image"] = self._component(
                camera, f"{fn}_image", "image", fn, image_topic=topic,
                content_type=event.content_type or "application/octet-stream")
        if len(camera.components) != before:
            self._configs[camera.name] = None
        last = {"at": rfc3339(event.created_at), "function": fn, "latency_ms": event.data.get("latency_ms"),
                "event_id": event.id}
        self._state(camera, self._state_topic(camera), _json(last))

    def birth(self, topic: str, payload: bytes) -> bool:
        """True (and everything is due again) when this is Home Assistant coming online."""
        if topic != self.birth_topic or payload.strip() != b"online":
            return False
        log.info("Home Assistant is online: announcing %d cameras again", len(self._cameras))
        self.republish()
        return True

    def republish(self) -> None:
        """Every config and latest state is due again (a new connection, or Home Assistant restarted)."""
        for camera in self._cameras.values():
            self._configs[camera.name] = None
            self._states.update(camera.states)

    def take(self) -> Announcement | None:
        """The next message to publish (configs before states), or None."""
        if self._configs:
            name = next(iter(self._configs))
            del self._configs[name]
            return self._config(self._cameras[name])
        if self._states:
            topic = next(iter(self._states))
            return Announcement(topic, self._states.pop(topic))
        return None

    # -- building the messages -----------------------------------------------------------------------------

    def _camera(self, name: str) -> _Camera | None:
        camera = self._cameras.get(name)
        if camera is not None:
            return camera
        if len(self._cameras) >= self._settings.max_devices:
            if not self._full:
                self._full = True
                log.warning("camera %r and any later camera are not announced to Home Assistant: "
                            "mqtt.homeassistant.max_devices (%d) cameras are", name, self._settings.max_devices)
            return None
        camera = self._cameras[name] = _Camera(name, object_id("edged", self._device_id, name))
        return camera

    def _state(self, camera: _Camera, topic: str, payload: bytes) -> None:
        camera.states[topic] = payload
        self._states.pop(topic, None)  # re-inserted last: the order of arrival is kept
        self._states[topic] = payload

    def _state_topic(self, camera: _Camera, function: str | None = None) -> str:
        base = f"{self._prefix}/state/{camera.name}"
        return base if function is None else f"{base}/{function}"

    def _component(self, camera: _Camera, key: str, platform: str, name: str, **options: Any) -> dict[str, Any]:
        return {"p": platform, "unique_id": f"{camera.id}_{key}", "name": name,
                "availability_topic": self._availability, **options}

    def _camera_components(self, camera: _Camera) -> dict[str, dict[str, Any]]:
        topic = self._state_topic(camera)
        return {
            "last_result": self._component(
                camera, "last_result", "sensor", "Last result", state_topic=topic, device_class="timestamp",
                value_template="{{ value_json.at }}", json_attributes_topic=topic),
            "latency": self._component(
                camera, "latency", "sensor", "Latency", state_topic=topic, value_template="{{ value_json.latency_ms }}",
                unit_of_measurement="ms", device_class="duration", state_class="measurement",
                entity_category="diagnostic"),
        }

    def _label_component(self, camera: _Camera, function: str) -> dict[str, Any]:
        topic = self._state_topic(camera, function)
        # The whole result becomes the attributes (label, confidence, top 5, model): no template to
        # fail on a function whose result has other keys.
        return self._component(camera, f"{function}_label", "sensor", function, state_topic=topic,
                               value_template="{{ value_json.label }}", json_attributes_topic=topic,
                               icon="mdi:tag")

    def _config(self, camera: _Camera) -> Announcement:
        payload = {
            "dev": {"identifiers": [camera.id], "name": camera.name, "manufacturer": "edged",
                    "model": f"camera on edged {self._device_id}", "sw_version": self._version},
            "o": {"name": "edged", "sw_version": self._version},
            "cmps": camera.components,
        }
        topic = f"{self._settings.discovery_prefix}/device/{camera.id}/config"
        return Announcement(topic, _json(payload))
