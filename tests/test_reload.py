"""Reload of the real daemon on SIGHUP: functions added and removed under a stream of calls, an invalid
config kept out, restart-only settings named, the RELOADING/READY datagrams on a real notify socket, and
MQTT subscriptions changed on a real mosquitto."""

from __future__ import annotations

import io
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.configs import daemon_config, write_config
from tests.daemon import Daemon, run_daemon
from tests.mosquitto import Mosquitto, Peer
from tests.notify import NotifySocket
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

RELOADED = "reloaded (functions:"


def image() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 100, 50)).save(out, format="PNG")
    return out.getvalue()


def post(url: str, data: bytes) -> int:
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def config(tmp_path: Path, *names: str, **tables: Any) -> dict[str, Any]:
    functions = {name: {"module": GRAYSCALE, "abi": "frame-v1", "memory_mb": 32} for name in names}
    return daemon_config(tmp_path / "state", functions=functions, **tables)


def reload(d: Daemon, done_before: int, text: str = RELOADED) -> None:
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: d.log.count(text) > done_before, 60, lambda: f"{text!r} in the log:\n{d.tail()}")
    assert d.proc.poll() is None


def test_sighup_under_load_adds_and_removes_functions_without_a_failed_call(tmp_path: Path) -> None:
    path = write_config(tmp_path / "edged.toml", config(tmp_path, "gray"))
    data = image()
    statuses: list[int] = []
    stop = threading.Event()
    with run_daemon(path) as d:
        def load() -> None:
            while not stop.is_set():
                statuses.append(post(d.url + "/v1/functions/gray", data))

        callers = [threading.Thread(target=load, name=f"load-{i}") for i in range(2)]
        for caller in callers:
            caller.start()
        try:
            wait_until(lambda: len(statuses) >= 5, 60, "calls to flow before the first reload")
            for round_ in range(4):
                names = ("gray", "gray2") if round_ % 2 == 0 else ("gray",)
                write_config(path, config(tmp_path, *names))
                reload(d, round_)
                seen = len(statuses)
                wait_until(lambda seen=seen: len(statuses) > seen + 2, 60, "calls to go on after the reload")
            write_config(path, config(tmp_path, "gray", "gray2"))
            reload(d, 4)
        finally:
            stop.set()
            for caller in callers:
                caller.join(timeout=60)
        assert statuses, "no call was made"
        assert set(statuses) == {200}, f"{len([s for s in statuses if s != 200])} calls failed: {set(statuses)}"
        assert post(d.url + "/v1/functions/gray2", data) == 200  # the added function answers
        write_config(path, config(tmp_path, "gray"))
        reload(d, 5)
        assert post(d.url + "/v1/functions/gray2", data) == 404  # the removed one is gone
        assert post(d.url + "/v1/functions/gray", data) == 200


def test_invalid_config_on_reload_keeps_the_running_one_in_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "edged.toml", config(tmp_path, "gray"))
    garbage = tmp_path / "garbage.wasm"
    garbage.write_bytes(b"\0asm this is not a module")
    data = image()
    with run_daemon(path) as d:
        bad = config(tmp_path, "gray")
        bad["functions"]["broken"] = {"module": garbage}
        write_config(path, bad)
        reload(d, 0, "reload refused")
        refused = [line for line in d.log.splitlines() if "reload refused" in line]
        assert len(refused) == 1
        assert "functions.broken" in refused[0]
        assert post(d.url + "/v1/functions/gray", data) == 200
        assert post(d.url + "/v1/functions/broken", data) == 404
        # A restart-only setting: named once, the running value kept; the rest is applied.
        write_config(path, config(tmp_path, "gray", "gray2", pool={"workers": 3}))
        reload(d, 0)
        restart = [line for line in d.log.splitlines() if "needs a restart" in line]
        assert len(restart) == 1
        assert "pool.workers" in restart[0]
        assert post(d.url + "/v1/functions/gray2", data) == 200
        assert d.proc.poll() is None


def test_reload_notifies_reloading_with_monotonic_usec_then_ready(tmp_path: Path) -> None:
    path = write_config(tmp_path / "edged.toml", config(tmp_path, "gray"))
    with NotifySocket(tmp_path / "notify.sock") as notify, \
            run_daemon(path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}) as d:
        notify.wait_for("READY=1")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        write_config(path, config(tmp_path, "gray", "gray2"))
        reload(d, 0)
        notify.wait_for("READY=1", times=2)
    messages = notify.messages
    reloading = [m for m in messages if "RELOADING=1" in m]
    assert len(reloading) == 1
    fields = dict(line.split("=", 1) for line in reloading[0].splitlines())
    usec = int(fields["MONOTONIC_USEC"])
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    order = [m for m in messages if "RELOADING=1" in m or "READY=1" in m]
    assert ["READY=1" in m for m in order] == [True, False, True]


def test_reload_changes_mqtt_subscriptions_on_the_live_connection(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        def with_topic(topic: str) -> dict[str, Any]:
            return config(tmp_path, "gray", mqtt={
                "enabled": True, "host": "127.0.0.1", "port": broker.port, "client_id": "edged-reload-test",
                "reconnect_min_delay": 0.05, "subscriptions": [{"topic": topic, "functions": ["gray"], "qos": 1}]})

        path = write_config(tmp_path / "edged.toml", with_topic("old/+/image"))
        data = image()
        with run_daemon(path) as d, Peer(broker, "results", subscribe=("edged/results/#",)) as results, \
                Peer(broker, "camera") as camera:
            for component in ("mqtt", "mqtt-results"):
                d.wait_log(f"{component}: connected")
            broker.wait_subscribed("edged-reload-test", "old/+/image")

            def result_for(cam: str) -> bool:
                return any(m.topic.startswith(f"edged/results/{cam}/") for m in results.received())

            camera.publish("old/cam1/image", data)
            results.wait_for(lambda _: result_for("cam1"), 60, "a result for a frame on the old topic")
            write_config(path, with_topic("new/+/image"))
            reload(d, 0)
            broker.wait_subscribed("edged-reload-test", "new/+/image")
            camera.publish("new/cam2/image", data)
            results.wait_for(lambda _: result_for("cam2"), 60, "a result for a frame on the new topic")
            camera.publish("old/cam3/image", data)  # no longer subscribed: the broker drops it
            camera.publish("new/cam4/image", data)
            results.wait_for(lambda _: result_for("cam4"), 60, "a result for a later frame on the new topic")
            assert not result_for("cam3")
            assert "no subscription matches" not in d.log
