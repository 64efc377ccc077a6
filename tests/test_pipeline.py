"""The ingest policy: each transport's is built once from its own settings, and the pipeline does what
it says (limits, which errors become events, what is marked for MQTT, answers from the store)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from edged.events import NewEvent, StoredEvent
from edged.metrics import Metrics
from edged.pipeline import IngestPolicy, Pipeline
from edged.settings import FunctionSettings, HttpSettings, MqttSettings, PoolSettings, Settings
from edged.wasm.pool import CallResult, FunctionPool
from tests.assets import GRAYSCALE_WASM as GRAY


def test_http_policy_comes_from_the_http_settings() -> None:
    policy = IngestPolicy.for_http(HttpSettings(max_pixels=1234, max_body_bytes=5678))
    assert policy == IngestPolicy(transport="http", max_pixels=1234, max_bytes=5678, dedupe_window=0.0,
                                  record_errors=False, publish_mqtt=False)


def test_mqtt_policy_comes_from_the_mqtt_settings() -> None:
    mqtt = MqttSettings(max_pixels=4321, max_payload_bytes=8765, dedupe_window=12.5)
    assert IngestPolicy.for_mqtt(mqtt) == IngestPolicy(transport="mqtt", max_pixels=4321, max_bytes=8765,
                                                       dedupe_window=12.5, record_errors=True, publish_mqtt=True)
    assert IngestPolicy.for_mqtt(MqttSettings(dedupe_window=0)).dedupe_window == 0.0


def test_each_transport_reads_only_its_own_table() -> None:
    settings = Settings(http={"max_pixels": 10, "max_body_bytes": 20},
                        mqtt={"max_pixels": 30, "max_payload_bytes": 40})
    http, mqtt = IngestPolicy.for_http(settings.http), IngestPolicy.for_mqtt(settings.mqtt)
    assert (http.max_pixels, http.max_bytes) == (10, 20)
    assert (mqtt.max_pixels, mqtt.max_bytes) == (30, 40)


def test_policy_is_frozen() -> None:
    policy = IngestPolicy.for_http(HttpSettings())
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_pixels = 1  # type: ignore[misc]


class RecordingStore:
    """An EventStore that keeps commits in memory and answers the dedupe look-up from them."""

    def __init__(self) -> None:
        self.commits: list[dict[str, object]] = []
        self.lookups: list[tuple[str, str, float]] = []
        self.stored: dict[tuple[str, str], list[StoredEvent]] = {}

    async def commit_input(self, *, transport: str, camera: str, sha256: str, received_at: float,
                           correlation: bytes | None, events: list[NewEvent],
                           publish_mqtt: bool) -> list[StoredEvent]:
        self.commits.append({"transport": transport, "camera": camera, "publish_mqtt": publish_mqtt,
                             "kinds": [e.kind for e in events]})
        stored = [StoredEvent(f"id{len(self.commits)}-{i}", i, camera, e.function, e.kind, e.data, e.body,
                              e.content_type, received_at) for i, e in enumerate(events)]
        self.stored[(camera, sha256)] = stored
        return stored

    async def recent_input(self, camera: str, sha256: str, window_s: float) -> list[StoredEvent] | None:
        self.lookups.append((camera, sha256, window_s))
        return self.stored.get((camera, sha256))


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize(size).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[FunctionPool]:
    async with FunctionPool({"grayscale": FunctionSettings(module=GRAY)}, PoolSettings(workers=1, queue=2),
                            tmp_path / "cache") as p:
        yield p


async def test_http_policy_answers_errors_without_recording_them(tmp_path: Path, pool: FunctionPool) -> None:
    store = RecordingStore()
    pipeline = Pipeline(Settings(state_dir=tmp_path), pool, store, Metrics())
    policy = IngestPolicy.for_http(HttpSettings(max_pixels=100 * 100, max_body_bytes=50_000))
    too_big = await pipeline.process(policy=policy, camera="c", data=bytes(50_001), functions=["grayscale"])
    too_many = await pipeline.process(policy=policy, camera="c", data=png((101, 100)), functions=["grayscale"])
    assert too_big.ingest_error is not None
    assert too_big.ingest_error.code == "too_large"
    assert too_many.ingest_error is not None
    assert too_many.ingest_error.code == "too_many_pixels"
    assert store.commits == []
    ok = await pipeline.process(policy=policy, camera="c", data=png((100, 100)), functions=["grayscale"])
    assert isinstance(ok.results["grayscale"], CallResult)
    again = await pipeline.process(policy=policy, camera="c", data=png((100, 100)), functions=["grayscale"])
    assert not again.duplicate
    assert store.lookups == []  # dedupe_window 0: the store is never asked
    assert store.commits == [{"transport": "http", "camera": "c", "publish_mqtt": False, "kinds": ["result"]}] * 2


async def test_mqtt_policy_records_errors_marks_them_and_dedupes(tmp_path: Path, pool: FunctionPool) -> None:
    store = RecordingStore()
    pipeline = Pipeline(Settings(state_dir=tmp_path), pool, store, Metrics())
    policy = IngestPolicy.for_mqtt(MqttSettings(max_pixels=100 * 100, max_payload_bytes=50_000, dedupe_window=60))
    bad = await pipeline.process(policy=policy, camera="cam1", data=bytes(50_001), functions=["grayscale"])
    assert bad.ingest_error is not None
    assert bad.ingest_error.code == "too_large"
    assert [e.kind for e in bad.events] == ["error"]
    assert store.commits == [{"transport": "mqtt", "camera": "cam1", "publish_mqtt": True, "kinds": ["error"]}]
    image = png((64, 48))
    first = await pipeline.process(policy=policy, camera="cam1", data=image, functions=["grayscale"])
    second = await pipeline.process(policy=policy, camera="cam1", data=image, functions=["grayscale"])
    assert not first.duplicate
    assert second.duplicate
    assert [e.id for e in second.events] == [e.id for e in first.events]
    assert len(store.commits) == 2  # the copy was answered from the store, not committed again
    assert {window for _, _, window in store.lookups} == {60.0}


async def test_a_result_image_over_max_image_bytes_is_dropped_from_the_stored_event(tmp_path: Path,
                                                                                   pool: FunctionPool) -> None:
    store = RecordingStore()
    image = png((64, 48))
    policy = IngestPolicy.for_http(HttpSettings())
    kept = await Pipeline(Settings(state_dir=tmp_path), pool, store, Metrics()).process(
        policy=policy, camera="c", data=image, functions=["grayscale"])
    result = kept.results["grayscale"]
    assert isinstance(result, CallResult)
    assert kept.events[0].body == result.body
    assert "dropped" not in kept.events[0].data["image"]
    capped = Settings(state_dir=tmp_path, outbox={"max_image_bytes": len(result.body) - 1})
    dropped = await Pipeline(capped, pool, store, Metrics()).process(
        policy=policy, camera="c", data=image, functions=["grayscale"])
    event = dropped.events[0]
    assert isinstance(dropped.results["grayscale"], CallResult)  # the client still gets the image
    assert event.body is None
    assert event.data["image"] == {"content_type": "image/png", "bytes": len(result.body),
                                   "sha256": kept.events[0].data["image"]["sha256"],
                                   "dropped": "over outbox.max_image_bytes"}
