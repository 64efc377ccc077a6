"""MQTT ingest against a real mosquitto: frames in, results out, at-least-once across restarts.

The functions are inline WAT (frame-v1): ``size`` answers ``{"w": W, "h": H}`` and ``ident`` returns the
frame it was given (an image result). Cameras and result consumers are plain paho clients (``Peer``).
Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image

from edged.errors import Overloaded
from edged.events import StoredEvent
from edged.ingest.mqtt import MqttIngest
from edged.ingest.routes import camera_of, route_for, routes
from edged.metrics import Metrics
from edged.pipeline import Outcome, Pipeline
from edged.settings import Settings, Subscription
from edged.status import Components
from edged.store import Store
from edged.sync.cloudevents import CloudEvents
from edged.sync.mqtt_render import render
from edged.sync.mqtt_results import ResultPublisher
from edged.wasm.pool import FunctionPool
from tests.configs import daemon_config, write_config
from tests.daemon import run_daemon
from tests.mosquitto import Mosquitto, Peer, make_tls
from tests.waiting import until, wait_until
from tests.wat import Wat, write_wasm

FRAMES_TOPIC = "edged/cameras/{camera}/image"


# -- fixtures and helpers ---------------------------------------------------------------------------------


def frame(n: int, size: tuple[int, int] = (24, 16), fmt: str = "PNG") -> bytes:
    """A small image whose bytes differ for every ``n``."""
    img = Image.new("RGB", size, ((n * 37) % 256, (n * 11) % 256, (n // 256) % 256))
    img.putpixel((0, 0), (n % 256, (n // 256) % 256, 7))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("wasm")
    size = Wat()
    size_run = size.json(w="(i32.load offset=8 (local.get $ptr))", h="(i32.load offset=12 (local.get $ptr))")
    ident = Wat()
    return {
        "size": write_wasm(directory, "size", size.frame_module(f"{size_run}\n    (drop (call $emit)) (i32.const 0)")),
        "ident": write_wasm(directory, "ident", ident.frame_module(
            "(drop (call $output (local.get $ptr) (local.get $len) (i32.const 3))) (i32.const 0)")),
    }


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def make_settings(tmp_path: Path, modules: dict[str, Path], broker: Mosquitto, *,
                  functions: tuple[str, ...] = ("size",), pool: dict[str, int] | None = None,
                  **mqtt: Any) -> Settings:
    mqtt_settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": broker.port, "client_id": f"edged-test-{tmp_path.name}"[:60],
        "keepalive": 10, "reconnect_min_delay": 0.05, "reconnect_max_delay": 0.5,
        "subscriptions": [{"topic": "edged/cameras/+/image", "functions": list(functions), "qos": 1}],
    }
    mqtt_settings.update(mqtt)
    return Settings(
        state_dir=tmp_path / "state", device_id="gw-test", dapr={"enabled": False},
        pool=pool or {"workers": 2, "queue": 8},
        functions={name: {"module": str(path)} for name, path in modules.items()},
        mqtt=mqtt_settings,
    )


@dataclass
class Harness:
    settings: Settings
    pipeline: Pipeline
    ingest: MqttIngest
    store: Store
    metrics: Metrics
    components: Components

    @property
    def state(self) -> str:
        current = self.components.get("mqtt")
        return current.state if current else ""

    @property
    def detail(self) -> str:
        current = self.components.get("mqtt")
        return current.detail if current else ""


@contextlib.asynccontextmanager
async def running(settings: Settings, pipeline_cls: type[Pipeline] = Pipeline,
                  pool_cls: type[FunctionPool] = FunctionPool) -> AsyncIterator[Harness]:
    """The MQTT component with a real store and pool, its loops in a TaskGroup (as App.run does)."""
    metrics = Metrics()
    components = Components(metrics)
    pool = pool_cls(settings.functions, settings.pool, settings.state_dir / "cache", on_call=metrics.on_call)
    admit = CloudEvents(settings.device_id, settings.sync).admit
    store = Store(settings.state_dir / "edged.db", settings.outbox, admit, metrics)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pipeline = pipeline_cls(settings, pool, store, metrics)
    results = ResultPublisher(settings.mqtt, settings.mqtt_client_id, store, metrics, components)
    ingest = MqttIngest(settings, pipeline, results, metrics, components, attempts=store)
    async with store, pool, results, ingest, asyncio.TaskGroup() as tasks:
        background = {**ingest.background(), **results.background()}
        loops = [tasks.create_task(coro, name=name) for name, coro in background.items()]
        try:
            yield Harness(settings, pipeline, ingest, store, metrics, components)
        finally:
            for task in loops:
                task.cancel()

async def subscribed(h: Harness, broker: Mosquitto, settings: Settings, what: str = "a connection") -> None:
    """Connected, and every subscription in place at the broker: edged says "connected" on CONNACK and only
    then sends its SUBSCRIBE, so a frame published in between would match nothing and be dropped."""
    await until(lambda: h.state == "connected", 10, what)
    for subscription in settings.mqtt.subscriptions:
        await asyncio.to_thread(broker.wait_subscribed, settings.mqtt_client_id, subscription.topic, 20)



async def nothing_to_publish(store: Store) -> bool:
    """True once the store has nothing left to publish on MQTT (every PUBACK marked)."""
    return not await store.mqtt_pending(10)


def results_by_sha(messages: list[paho.MQTTMessage], function: str = "size") -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for msg in messages:
        if msg.topic.startswith("edged/results/") and msg.topic.endswith(f"/{function}"):
            body = json.loads(msg.payload)
            out.setdefault(body["source"]["sha256"], []).append(body)
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample(h: Harness, name: str, **labels: str) -> float:
    return h.metrics.registry.get_sample_value(name, labels) or 0.0


def v5_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        setattr(props, key, value)
    return props


# -- unit level -------------------------------------------------------------------------------------------


def test_camera_from_topic_level_or_user_property() -> None:
    table = routes([Subscription(topic="site/+/cam/+/jpeg", functions=("a",)),
                    Subscription(topic="$share/gw/frames/#", functions=("b",), qos=2)])
    route = route_for(table, "site/north/cam/door/jpeg")
    assert route is not None
    assert route.functions == ("a",)
    assert camera_of(route, "site/north/cam/door/jpeg", None) == "north"  # the first '+'
    shared = route_for(table, "frames/x/y")
    assert shared is not None
    assert shared.functions == ("b",)
    assert shared.qos == 1  # QoS 2 is taken at QoS 1
    assert camera_of(shared, "frames/x/y", None) == "unknown"
    assert camera_of(shared, "frames/x", v5_props(UserProperty=[("camera", "gate/1+#")])) == "gate_1__"
    assert route_for(table, "other/topic") is None


@pytest.mark.parametrize("topic", ["a/b+/c", "a/#/b", "a#", "$share/g", "$share//a", ""])
def test_malformed_topic_filters_are_config_errors(topic: str) -> None:
    with pytest.raises(ValueError, match="filter|level|shared"):
        Subscription(topic=topic, functions=("a",))


def test_render_topics_and_payloads() -> None:
    data = {"id": "e1", "camera": "cam1", "function": "ident", "kind": "result", "latency_ms": 2.0,
            "source": {"sha256": "ab", "received_at": "t", "correlation": "req-7"},
            "image": {"content_type": "image/png", "bytes": 3, "sha256": "cd"}}
    event = StoredEvent("e1", 1, "cam1", "ident", "result", data, b"PNG", "image/png", 0.0)
    as_json = render(event, prefix="p", publish_images=False, v5=True)
    assert as_json.topic == "p/results/cam1/ident"
    assert json.loads(as_json.payload)["id"] == "e1"
    as_image = render(event, prefix="p", publish_images=True, v5=True)
    assert as_image.payload == b"PNG"
    assert as_image.properties is not None
    assert ("id", "e1") in as_image.properties.UserProperty
    assert ("correlation", "req-7") in as_image.properties.UserProperty
    assert render(event, prefix="p", publish_images=True, v5=False).payload == as_json.payload  # 3.1.1: JSON
    error = StoredEvent("e2", 2, "cam1", "", "error", {"id": "e2", "error": {"code": "bad_image"}}, None, None, 0.0)
    assert render(error, prefix="p", publish_images=False, v5=True).topic == "p/errors/cam1"


# -- against mosquitto --------------------------------------------------------------------------------------


async def test_frames_in_results_out(tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker, functions=("size", "ident"), publish_images=True,
                             subscriptions=[{"topic": "edged/cameras/+/image", "functions": ["size", "ident"]},
                                            {"topic": "nvr/frames", "functions": ["size"]}])
    with Peer(broker, "consumer", subscribe=("edged/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
            images = [frame(i) for i in range(3)]
            for i, data in enumerate(images):
                props = v5_props(CorrelationData=f"req-{i}".encode())
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data, properties=props)
            nvr = frame(100)
            door = v5_props(UserProperty=[("camera", "door")])
            await asyncio.to_thread(camera.publish, "nvr/frames", nvr, properties=door)
            await until(lambda: len(consumer.received("edged/results/")) == 7, 20, "7 results")
            with Peer(broker, "late", subscribe=("edged/status",)) as late:
                late.wait_for(lambda m: len(m) == 1, 10, "the retained status")
                assert late.received()[0].payload == b"online"
                assert late.received()[0].retain

        by_sha = results_by_sha(consumer.received())
        for i, data in enumerate(images):
            (body,) = by_sha[sha(data)]
            assert body["camera"] == "cam1"
            assert body["result"] == {"w": 24, "h": 16}
            assert body["source"]["correlation"] == f"req-{i}"
            assert body["source"]["transport"] == "mqtt"
            assert body["source"]["received_at"].endswith("Z")
            assert body["latency_ms"] >= 0
        assert by_sha[sha(nvr)][0]["camera"] == "door"
        pictures = consumer.received("edged/results/cam1/ident")
        assert len(pictures) == 3
        for msg in pictures:
            assert msg.payload.startswith(b"\x89PNG")
            props = dict(msg.properties.UserProperty)
            assert props["camera"] == "cam1"
            assert props["id"]
        await until(lambda: consumer.received("edged/status")[-1].payload == b"offline", 10, "the offline status")


async def test_bad_payloads_get_error_results_and_are_acked(tmp_path: Path, modules: dict[str, Path],
                                                            broker: Mosquitto) -> None:
    # One frame at a time (pool of 1 + 1 queued, 1 function), so a redelivery would come before the sentinel.
    settings = make_settings(tmp_path, modules, broker, max_payload_bytes=4000, max_pixels=10_000,
                             pool={"workers": 1, "queue": 1})
    bad = {"not-an-image": b"hello, not an image", "too-large": frame(1, (200, 200), "BMP"),
           "too-many-pixels": frame(2, (120, 100))}
    with Peer(broker, "consumer", subscribe=("edged/#",)) as consumer, Peer(broker, "camera") as camera:
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
            for name, data in bad.items():
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera=name), data)
            await until(lambda: len(consumer.received("edged/errors/")) == 3, 20, "3 error results")
            await until(lambda: sample(h, "edged_mqtt_published_total", outcome="ok") == 3, 10, "their PUBACKs")
        codes = {m.topic.split("/")[-1]: json.loads(m.payload)["error"]["code"]
                 for m in consumer.received("edged/errors/")}
        assert codes == {"not-an-image": "bad_image", "too-large": "too_large", "too-many-pixels": "too_many_pixels"}

        # Restarted with the same session: nothing is redelivered, the next good frame is simply processed.
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
            good = frame(3)
            await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), good)
            await until(lambda: sha(good) in results_by_sha(consumer.received()), 20, "the good frame's result")
            assert sample(h, "edged_mqtt_frames_total", outcome="duplicate") == 0
            assert sample(h, "edged_mqtt_frames_total", outcome="rejected") == 0
        assert len(consumer.received("edged/errors/")) == 3


class FlakyPipeline(Pipeline):
    """Refuses the first attempt of every other frame, as a full pool does; counts its refusals (per
    instance, so each run of a parametrised test counts its own)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: set[str] = set()
        self.refused = 0

    async def process(self, **kwargs: Any) -> Outcome:  # type: ignore[override]
        if kwargs["sha256"] not in self.seen:
            self.seen.add(kwargs["sha256"])
            if len(self.seen) % 2:
                self.refused += 1
                raise Overloaded("test: pool full")
        return await super().process(**kwargs)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_burst_larger_than_the_inflight_limit(tmp_path: Path, modules: dict[str, Path], broker: Mosquitto,
                                                    protocol: str) -> None:
    settings = make_settings(tmp_path, modules, broker, protocol=protocol, max_inflight=4)
    burst = [frame(i) for i in range(120)]
    with Peer(broker, "consumer", subscribe=("edged/results/#",)) as consumer, Peer(broker, "camera") as camera:
        # The frames wait in edged's session at the broker, then arrive all at once.
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")
        for i, data in enumerate(burst):
            camera.client.publish(FRAMES_TOPIC.format(camera=f"cam{i % 4}"), data, qos=1)
        await asyncio.to_thread(camera.publish, "edged/cameras/cam0/flush", b"")  # all of them are at the broker
        async with running(settings, FlakyPipeline) as h:
            await until(lambda: len(results_by_sha(consumer.received())) == len(burst), 60, "every result")
            peak = h.ingest.inflight_peak
            assert isinstance(h.pipeline, FlakyPipeline)
            refused = h.pipeline.refused
            # Every refusal came back to the ingest loop as Overloaded and was retried unacked.
            assert refused == sample(h, "edged_overloaded_total", source="mqtt")
        # edged stops reading at max_inflight; the read in progress may bring in as many packets as paho
        # has publishes in flight. (mosquitto 2.0.11 itself overshoots Receive Maximum once acks flow.)
        assert 1 <= peak <= settings.mqtt.max_inflight + settings.mqtt.max_publish_inflight + 1, peak
        assert refused == len(burst) // 2  # this run's own refusals: the first try of every other frame
    got = results_by_sha(consumer.received())
    assert set(got) == {sha(d) for d in burst}


class GatedPipeline(Pipeline):
    """Holds every frame until ``gate`` is set (the test stops the broker meanwhile)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.entered = 0

    async def process(self, **kwargs: Any) -> Outcome:  # type: ignore[override]
        self.entered += 1
        await self.gate.wait()
        return await super().process(**kwargs)


async def test_results_made_while_the_broker_is_down_are_published_after(tmp_path: Path, modules: dict[str, Path],
                                                                          broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker)
    images = [frame(i) for i in range(4)]
    consumer = Peer(broker, "consumer", subscribe=("edged/results/#",), clean=False).start()
    try:
        async with running(settings, GatedPipeline) as h:
            gated = h.pipeline
            assert isinstance(gated, GatedPipeline)
            await subscribed(h, broker, settings, "a connection")
            with Peer(broker, "camera") as camera:
                for data in images:
                    await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
            await until(lambda: gated.entered == len(images), 10, "all frames taken")
            await asyncio.to_thread(broker.stop)
            await until(lambda: h.state == "disconnected", 10, "the disconnect")
            gated.gate.set()
            await until(lambda: h.ingest.inflight == 0, 10, "the frames committed")
            pending = await h.store.mqtt_pending(100)
            assert len(pending) == len(images)  # kept in the store while the broker is away
            await asyncio.to_thread(broker.start)
            await until(lambda: len(results_by_sha(consumer.received())) == len(images), 20, "every result")
            # Not acked on the old connection, so redelivered: answered from the store, same event ids.
            await until(lambda: sample(h, "edged_mqtt_frames_total", outcome="duplicate") == len(images), 20,
                        "the redeliveries")
            await until(lambda: sum(map(len, results_by_sha(consumer.received()).values())) == 2 * len(images), 20,
                        "the repeated answers")
            await until(lambda: nothing_to_publish(h.store), 10, "every PUBACK marked in the store")
        for bodies in results_by_sha(consumer.received()).values():
            assert len({b["id"] for b in bodies}) == 1
    finally:
        consumer.close()


async def test_broker_restarted_mid_stream_loses_nothing(tmp_path: Path, modules: dict[str, Path],
                                                         broker: Mosquitto) -> None:
    settings = make_settings(tmp_path, modules, broker)
    images = [frame(i) for i in range(60)]
    consumer = Peer(broker, "consumer", subscribe=("edged/results/#",), clean=False).start()
    camera = Peer(broker, "camera", clean=False).start()
    try:
        async with running(settings) as h:
            await subscribed(h, broker, settings, "a connection")

            def stream() -> None:
                for i, data in enumerate(images):
                    camera.publish(FRAMES_TOPIC.format(camera=f"cam{i % 3}"), data)
                    if i == 25:
                        broker.restart()

            await asyncio.to_thread(stream)
            await until(lambda: set(results_by_sha(consumer.received())) == {sha(d) for d in images}, 60,
                        "a result for every frame")
    finally:
        camera.close()
        consumer.close()


async def test_tls_password_and_a_clear_error_for_a_wrong_one(tmp_path: Path, modules: dict[str, Path]) -> None:
    tls = make_tls(tmp_path / "tls")
    with Mosquitto(tmp_path / "broker", tls=tls, users={"edged": "right", "viewer": "pw"}) as broker:
        (tmp_path / "good").write_text("right\n")
        (tmp_path / "bad").write_text("wrong\n")
        common: dict[str, Any] = {
            "username": "edged",
            "tls": {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)},
        }
        bad = make_settings(tmp_path, modules, broker, password_file=str(tmp_path / "bad"), **common)
        async with running(bad) as h:
            await until(lambda: h.state == "error", 10, "the refusal")
            assert "refused" in h.detail
            assert "not authori" in h.detail.lower() or "bad user name or password" in h.detail.lower()

        # The password is read on every connect: a missing file is shown, and fixing it needs no restart.
        fixed = tmp_path / "fixed"
        later = make_settings(tmp_path, modules, broker, password_file=str(fixed), refused_retry_delay=0.1,
                              **common)
        async with running(later) as h:
            await until(lambda: "cannot read mqtt.password_file" in h.detail, 10, "the missing password")
            assert h.state == "error"
            assert f"{fixed}: no such file" in h.detail
            fixed.write_text("wrong\n")
            await until(lambda: "refused" in h.detail, 10, "the refusal of the wrong password")
            fixed.write_text("right\n")
            await until(lambda: h.state == "connected", 10, "a connection with the fixed password")
            assert sample(h, "edged_component_up", component="mqtt") == 1

        good = make_settings(tmp_path, modules, broker, password_file=str(tmp_path / "good"), **common)
        with Peer(broker, "consumer", username="viewer", password="pw", subscribe=("edged/#",)) as consumer, \
                Peer(broker, "camera", username="viewer", password="pw") as camera:
            async with running(good) as h:
                await until(lambda: h.state == "connected", 10, "a TLS connection")
                data = frame(9)
                await asyncio.to_thread(camera.publish, FRAMES_TOPIC.format(camera="cam1"), data)
                await until(lambda: sha(data) in results_by_sha(consumer.received()), 20, "the result")


# -- the whole daemon ---------------------------------------------------------------------------------------


def kill_test_config(tmp_path: Path, modules: dict[str, Path], broker: Mosquitto) -> Path:
    config = daemon_config(
        tmp_path / "state", device_id="gw-kill",
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port, "client_id": "edged-kill-test",
              "keepalive": 10, "reconnect_min_delay": 0.05, "reconnect_max_delay": 0.5,
              "subscriptions": [{"topic": "edged/cameras/+/image", "functions": ["size"], "qos": 1}]},
        functions={name: {"module": path} for name, path in modules.items()},
    )
    return write_config(tmp_path / "edged.toml", config)


def readyz(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def mqtt_state(url: str) -> str:
    state: str = readyz(url)["components"]["mqtt"]["state"]
    return state


def test_sigkill_mid_stream_then_restart_every_frame_has_a_result(tmp_path: Path, modules: dict[str, Path]) -> None:
    broker = Mosquitto(tmp_path / "broker")
    config = kill_test_config(tmp_path, modules, broker)
    images = [frame(i) for i in range(80)]
    with run_daemon(config) as daemon:
        # No broker yet: the daemon serves HTTP and says MQTT is not connected.
        assert mqtt_state(daemon.url) in ("starting", "disconnected")
        with broker:
            wait_until(lambda: mqtt_state(daemon.url) == "connected", 20, "the daemon to connect")
            consumer = Peer(broker, "consumer", subscribe=("edged/results/#", "edged/status"), clean=False).start()
            camera = Peer(broker, "camera", clean=False).start()
            try:
                def stream() -> None:
                    for i, data in enumerate(images):
                        camera.publish(FRAMES_TOPIC.format(camera=f"cam{i % 4}"), data)
                        time.sleep(0.005)

                publisher = threading.Thread(target=stream, name="camera")
                publisher.start()
                consumer.wait_for(lambda m: len(results_by_sha(m)) >= 10, 20, "the first results")
                daemon.kill()
                consumer.wait_for(lambda m: m[-1].topic == "edged/status" and m[-1].payload == b"offline", 10,
                                  "the last will")
                publisher.join(timeout=60)
                assert not publisher.is_alive()
                with run_daemon(config) as again:
                    consumer.wait_for(lambda m: set(results_by_sha(m)) == {sha(d) for d in images}, 60,
                                      "a result for every frame")
                    assert again.proc.poll() is None
            finally:
                camera.close()
                consumer.close()
