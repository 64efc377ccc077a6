"""Home Assistant MQTT discovery, end to end: the real daemon with the real classify and grayscale
functions, a real mosquitto, and plain paho clients playing Home Assistant.

Each test uses a camera of its own on one daemon. The config payloads are checked against what Home
Assistant's MQTT integration requires (checked against a real Home Assistant core, see FACTS.md): ``o``
present, every component with ``p`` and ``unique_id``, ids in ``[a-zA-Z0-9_-]``. States are read the
way Home Assistant reads them: the component's ``state_topic`` through its ``value_template``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from PIL import Image

from edged.events import StoredEvent
from edged.settings import MqttSettings
from edged.sync.homeassistant import Discovery, object_id
from tests.assets import CHELSEA as CHELSEA_JPG
from tests.assets import CLASSIFY_DIR as CLASSIFY
from tests.assets import REPO
from tests.configs import daemon_config, write_config
from tests.daemon import Daemon, run_daemon
from tests.mosquitto import Mosquitto, Peer

pytestmark = pytest.mark.timeout(300)

CHELSEA = CHELSEA_JPG.read_bytes()
CATS = {"Egyptian cat", "tabby", "tiger cat"}
ID = re.compile(r"^[A-Za-z0-9_-]+$")
CONFIGS = "homeassistant/device/+/config"
#: A first classify call loads and compiles; on a loaded 2-core machine that takes a while.
WAIT = 90.0


# -- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("ha-broker")) as running:
        yield running


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("ha-daemon")
    config = write_config(tmp / "edged.toml", daemon_config(
        tmp / "state", device_id="gw.1",
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port, "client_id": "edged-ha-test",
              "reconnect_min_delay": 0.05, "publish_images": True,
              "homeassistant": {"enabled": True},
              "subscriptions": [{"topic": "cameras/+/image", "functions": ["classify", "grayscale"], "qos": 1}]},
        functions={"grayscale": {"module": REPO / "functions" / "grayscale" / "grayscale.wasm"},
                   "classify": {"module": CLASSIFY / "classify.wasm", "memory_mb": 256,
                                "models": ["efficientnet_lite0"]}},
        models={"efficientnet_lite0": {"path": CLASSIFY / "model" / "efficientnet_lite0.tflite",
                                       "labels": CLASSIFY / "model" / "labels.txt"}}))
    with run_daemon(config) as d:
        # Frames published before the ingest subscription exists would be lost (a new session); the
        # subscription is sent in the same callback that logs the connection.
        for component in ("mqtt", "mqtt-results"):
            d.wait_log(f"{component}: connected")
        yield d


def configs_of(peer: Peer, camera: str, *, retained: bool | None = None) -> list[dict[str, Any]]:
    """The device configs ``peer`` received for ``camera`` (optionally only the retained or live ones)."""
    found = []
    for msg in peer.received("homeassistant/device/"):
        if retained is not None and bool(msg.retain) != retained:
            continue
        payload = json.loads(msg.payload)
        if payload["dev"]["name"] == camera:
            check_config(msg.topic, payload)
            found.append(payload)
    return found


def check_config(topic: str, payload: dict[str, Any]) -> None:
    """What Home Assistant needs of a device discovery message (else it drops it, or the entity)."""
    levels = topic.split("/")
    assert levels[:2] == ["homeassistant", "device"], topic
    assert levels[3:] == ["config"], topic
    assert ID.match(levels[2]), topic
    assert payload["o"]["name"] == "edged"
    assert payload["o"]["sw_version"]
    dev = payload["dev"]
    assert dev["identifiers"] == [levels[2]]
    assert dev["manufacturer"] == "edged"
    assert dev["model"]
    assert dev["sw_version"]
    assert dev["name"]
    assert payload["cmps"], "a device without components"
    unique_ids = set()
    for key, cmp in payload["cmps"].items():
        assert ID.match(key), key
        assert cmp["p"] in ("sensor", "image"), cmp
        assert ID.match(cmp["unique_id"]), cmp
        unique_ids.add(cmp["unique_id"])
        assert cmp["availability_topic"] == "edged/status"
        if cmp["p"] == "sensor":
            assert cmp["state_topic"], cmp
            assert cmp["value_template"], cmp
        else:
            assert cmp["image_topic"], cmp
            assert cmp["content_type"], cmp
    assert len(unique_ids) == len(payload["cmps"]), "unique_id repeated"


def render(template: str, payload: bytes) -> Any:
    """``{{ value_json.a.b }}`` applied to ``payload``, as Home Assistant's template does."""
    match = re.fullmatch(r"\{\{ value_json((?:\.\w+)+) \}\}", template)
    assert match, f"{template!r} is not a plain value_json path"
    value = json.loads(payload)
    for key in match.group(1).split(".")[1:]:
        value = value[key]
    return value


def retained(broker: Mosquitto, topic: str, timeout: float = WAIT) -> bytes:
    """The retained message on ``topic``, read by a client that subscribes now."""
    with Peer(broker, f"ha-read-{abs(hash(topic))}", subscribe=(topic,)) as peer:
        peer.wait_for(lambda msgs: any(m.topic == topic and m.retain for m in msgs), timeout,
                      f"a retained message on {topic}")
        return bytes(next(m for m in peer.received() if m.topic == topic).payload)


def frame(camera: str, broker: Mosquitto, payload: bytes = CHELSEA) -> None:
    with Peer(broker, f"camera-{camera}") as cam:
        cam.publish(f"cameras/{camera}/image", payload)


def announced(broker: Mosquitto, camera: str, *components: str) -> dict[str, Any]:
    """Wait for the retained config of ``camera`` that has ``components``; return it."""
    with Peer(broker, f"ha-wait-{camera}", subscribe=(CONFIGS,)) as ha:
        ha.wait_for(lambda _: any(set(components) <= c["cmps"].keys() for c in configs_of(ha, camera)), WAIT,
                    f"a config for {camera} with {components}")
        return next(c for c in reversed(configs_of(ha, camera)) if set(components) <= c["cmps"].keys())


# -- end to end ---------------------------------------------------------------------------------------------


def test_label_sensor_carries_the_label_of_a_real_classified_frame(broker: Mosquitto, daemon: Daemon) -> None:
    frame("porch", broker)
    config = announced(broker, "porch", "classify_label", "last_result", "latency")
    label = config["cmps"]["classify_label"]
    assert label["p"] == "sensor"
    assert label["unique_id"].endswith("_classify_label")
    state = retained(broker, label["state_topic"])
    assert render(label["value_template"], state) in CATS
    # Confidence and the top 5 are attributes: the whole result JSON is on the attributes topic.
    attributes = json.loads(retained(broker, label["json_attributes_topic"]))
    assert attributes["label"] in CATS
    assert 0 < attributes["confidence"] <= 1
    assert len(attributes["top"]) == 5
    assert attributes["top"][0]["label"] == attributes["label"]

    last = config["cmps"]["last_result"]
    assert last["device_class"] == "timestamp"
    at = datetime.fromisoformat(render(last["value_template"], retained(broker, last["state_topic"])))
    assert at.tzinfo is not None
    latency = config["cmps"]["latency"]
    assert render(latency["value_template"], retained(broker, latency["state_topic"])) > 0
    # Availability is edged's own retained birth.
    assert retained(broker, "edged/status") == b"online"


def test_a_late_subscriber_gets_the_retained_configs(broker: Mosquitto, daemon: Daemon) -> None:
    frame("yard", broker)
    announced(broker, "yard", "classify_label")
    # Home Assistant starting now, long after the camera was first seen.
    with Peer(broker, "ha-late", subscribe=(CONFIGS,)) as ha:
        ha.wait_for(lambda _: configs_of(ha, "yard", retained=True), WAIT, "the retained config of yard")
        config = configs_of(ha, "yard", retained=True)[-1]
    device = config["dev"]["identifiers"][0]
    assert device == object_id("edged", "gw.1", "yard")
    assert "." not in device


def test_the_birth_message_republishes_every_config(broker: Mosquitto, daemon: Daemon) -> None:
    for camera in ("gate", "drive"):
        frame(camera, broker)
        announced(broker, camera, "classify_label", "grayscale_image")
    with Peer(broker, "ha-birth", subscribe=(CONFIGS,)) as ha:
        ha.wait_for(lambda _: configs_of(ha, "gate", retained=True) and configs_of(ha, "drive", retained=True),
                    WAIT, "the retained configs")
        assert not configs_of(ha, "gate", retained=False)  # nothing new was seen: nothing live yet
        ha.publish("homeassistant/status", b"online", qos=0)
        ha.wait_for(lambda _: configs_of(ha, "gate", retained=False) and configs_of(ha, "drive", retained=False),
                    WAIT, "configs published again after Home Assistant's birth message")


def test_image_entity_shows_the_grayscale_result(broker: Mosquitto, daemon: Daemon) -> None:
    frame("garden", broker)
    image = announced(broker, "garden", "grayscale_image")["cmps"]["grayscale_image"]
    assert image["p"] == "image"
    assert image["content_type"] == "image/png"
    with Peer(broker, "ha-image", subscribe=(image["image_topic"],)) as ha:
        frame("garden", broker, CHELSEA[:2] + b"\xff\xfe\x00\x05two" + CHELSEA[2:])  # same pixels, new bytes
        ha.wait_for(lambda msgs: bool(msgs), WAIT, f"an image on {image['image_topic']}")
        shown = Image.open(io.BytesIO(ha.received()[0].payload))
    assert shown.format == "PNG"
    assert shown.mode == "L"
    assert shown.size == Image.open(io.BytesIO(CHELSEA)).size


# -- Discovery on its own -------------------------------------------------------------------------------------


def result(camera: str, function: str, n: int, **data: Any) -> StoredEvent:
    body = data.pop("body", None)
    return StoredEvent(f"id{n}", n, camera, function, "result", {"latency_ms": 1.5, **data}, body,
                       "image/png" if body else None, 1_700_000_000.0 + n)


def drain(discovery: Discovery) -> list[tuple[str, bytes]]:
    out = []
    while (message := discovery.take()) is not None:
        out.append((message.topic, message.payload))
    return out


def test_object_ids_are_valid_and_kept_apart() -> None:
    ids = {object_id("edged", "gw", cam) for cam in ("cam.1", "cam_1", "cam 1", "caméra", "cam_1")}
    assert len(ids) == 4
    assert all(ID.match(i) for i in ids)
    assert object_id("edged", "gw", "cam_1") == "edged_gw_cam_1"


def test_states_coalesce_and_configs_come_first() -> None:
    discovery = Discovery(MqttSettings(homeassistant={"enabled": True}), "gw", "1.0")
    for n, label in enumerate(("cat", "dog", "fox")):
        discovery.seen(result("cam", "classify", n, result={"label": label}), "edged/results/cam/classify")
    sent = drain(discovery)
    assert [topic for topic, _ in sent] == [
        "homeassistant/device/edged_gw_cam/config", "edged/state/cam/classify", "edged/state/cam"]
    assert json.loads(sent[1][1]) == {"label": "fox"}
    assert json.loads(sent[2][1])["event_id"] == "id2"
    # A result without a label adds nothing and announces no config again; images need publish_images.
    discovery.seen(result("cam", "other", 9, result={"n": 1}), "edged/results/cam/other")
    discovery.seen(result("cam", "gray", 10, body=b"PNG"), "edged/results/cam/gray")
    assert [topic for topic, _ in drain(discovery)] == ["edged/state/cam"]


def test_birth_and_reconnect_announce_everything_again() -> None:
    discovery = Discovery(MqttSettings(publish_images=True, homeassistant={"enabled": True}), "gw", "1.0")
    discovery.seen(result("cam", "gray", 1, body=b"PNG"), "edged/results/cam/gray")
    first = drain(discovery)
    config = json.loads(first[0][1])
    check_config(first[0][0], config)
    assert config["cmps"]["gray_image"]["image_topic"] == "edged/results/cam/gray"
    assert not discovery.birth("homeassistant/status", b"offline")
    assert not discovery.birth("other/status", b"online")
    assert drain(discovery) == []
    assert discovery.birth("homeassistant/status", b"online")
    assert drain(discovery) == first
    discovery.republish()
    assert drain(discovery) == first


def test_cameras_beyond_max_devices_are_not_announced(caplog: pytest.LogCaptureFixture) -> None:
    discovery = Discovery(MqttSettings(homeassistant={"enabled": True, "max_devices": 2}), "gw", "1.0")
    for n, camera in enumerate(("a", "b", "c", "d")):
        discovery.seen(result(camera, "classify", n, result={"label": "x"}), f"edged/results/{camera}/classify")
    topics = [topic for topic, _ in drain(discovery)]
    assert [t for t in topics if t.endswith("/config")] == [
        "homeassistant/device/edged_gw_a/config", "homeassistant/device/edged_gw_b/config"]
    assert not any(t.startswith(("edged/state/c", "edged/state/d")) for t in topics)
    assert sum("max_devices" in r.getMessage() for r in caplog.records) == 1


def test_settings_refuse_a_bad_prefix_and_discovery_without_mqtt() -> None:
    with pytest.raises(ValueError, match="topic levels"):
        MqttSettings(homeassistant={"discovery_prefix": "home/+"})
    with pytest.raises(ValueError, match="needs mqtt.enabled"):
        MqttSettings(enabled=False, homeassistant={"enabled": True})

