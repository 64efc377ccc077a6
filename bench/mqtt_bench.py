"""MQTT ingest benchmark (issue: MQTT camera ingest). Prints tables; asserts nothing.

The real daemon (``python -m edged run``) with the real functions (classify through WASI-NN and
grayscale, both on every frame) and a real mosquitto on loopback. Four simulated cameras (one paho
client each) publish 640x480 JPEGs at QoS 1, every frame's bytes unique (a JPEG comment carries a
counter), at increasing total rates; a consumer subscribed to the results measures publish-to-result
latency (a frame is done when both of its results arrived). After each step the backlog is drained
and every frame must have both results (loss = frames without them). Then a backlog burst measures
the saturated throughput. RSS is the daemon's, read from /proc after each step.

    .venv/bin/python bench/mqtt_bench.py [--quick] [--rates 8,16,24,32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.configs import daemon_config, write_config  # noqa: E402
from tests.daemon import Daemon, run_daemon  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
CAMERAS = 4
FUNCTIONS = ("classify", "grayscale")
DRAIN_SECONDS = 120.0


def base_jpeg() -> bytes:
    with Image.open(PHOTO) as img:
        out = io.BytesIO()
        img.convert("RGB").resize((640, 480)).save(out, format="JPEG", quality=85)
        return out.getvalue()


def unique(jpeg: bytes, n: int) -> bytes:
    """The same picture with a COM segment holding ``n``: other bytes, same pixels."""
    text = f"edged-bench frame {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def config(tmp: Path, broker: Mosquitto, workers: int, queue: int, *, topic: str = "cameras/+/image",
           prefix: str = "edged", client_id: str = "edged-bench") -> Path:
    classify = ROOT / "functions" / "classify"
    return write_config(tmp / "edged.toml", daemon_config(
        tmp / "state", device_id="bench",
        pool={"workers": workers, "queue": queue},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port, "client_id": client_id, "prefix": prefix,
              "max_inflight": 16, "reconnect_min_delay": 0.05,
              "subscriptions": [{"topic": topic, "functions": list(FUNCTIONS), "qos": 1}]},
        functions={"grayscale": {"module": ROOT / "functions" / "grayscale" / "grayscale.wasm"},
                   "classify": {"module": classify / "classify.wasm", "memory_mb": 256,
                                "models": ["efficientnet_lite0"]}},
        models={"efficientnet_lite0": {"path": classify / "model" / "efficientnet_lite0.tflite",
                                       "labels": classify / "model" / "labels.txt"}}))


@dataclass
class Results:
    """What the consumer saw: per frame sha256, when each function's result arrived."""

    sent: dict[str, float] = field(default_factory=dict)
    arrived: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        body = json.loads(msg.payload)
        with self.lock:
            if body.get("kind") == "error":
                self.errors += 1
            sha = body["source"]["sha256"]
            self.arrived.setdefault(sha, {}).setdefault(body["function"] or "-", now)

    def done(self, shas: list[str]) -> list[float]:
        """Latencies (ms) of the frames among ``shas`` that have all their results."""
        with self.lock:
            out = []
            for sha in shas:
                got = self.arrived.get(sha, {})
                if all(f in got for f in FUNCTIONS):
                    out.append((max(got[f] for f in FUNCTIONS) - self.sent[sha]) * 1000)
            return out


def client(broker: Mosquitto, client_id: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", broker.port, keepalive=30)
    c.loop_start()
    return c


def rss_mb(daemon: Daemon) -> float:
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(daemon: Daemon) -> float:
    fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def mqtt_state(daemon: Daemon) -> str:
    with urllib.request.urlopen(f"{daemon.url}/readyz", timeout=5) as resp:
        state: str = json.loads(resp.read())["components"]["mqtt"]["state"]
        return state


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Cameras:
    def __init__(self, broker: Mosquitto, results: Results) -> None:
        self.clients = [client(broker, f"bench-cam{i}") for i in range(CAMERAS)]
        self.results = results
        self.jpeg = base_jpeg()
        self.counter = 0

    def publish_one(self, cam: int) -> str:
        data = unique(self.jpeg, self.counter)
        self.counter += 1
        sha = hashlib.sha256(data).hexdigest()
        with self.results.lock:
            self.results.sent[sha] = time.monotonic()
        self.clients[cam].publish(f"cameras/cam{cam}/image", data, qos=1)
        return sha

    def run(self, rate: float, seconds: float) -> list[str]:
        """Publish at ``rate`` frames/s in total (round robin over the cameras) for ``seconds``."""
        shas = []
        start = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while n < due:
                shas.append(self.publish_one(n % CAMERAS))
                n += 1
            time.sleep(0.002)
        return shas

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short steps")
    parser.add_argument("--rates", default="", help="total frames/s per step, comma separated")
    parser.add_argument("--seconds", type=float, default=0.0, help="seconds per step")
    parser.add_argument("--workers", type=int, default=0, help="pool workers (default: CPU count)")
    parser.add_argument("--burst", type=int, default=0, help="frames in the saturation burst")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [4, 8, 12, 16, 20, 24, 32]
    burst = args.burst or (100 if args.quick else 400)
    with tempfile.TemporaryDirectory(prefix="edged-mqtt-bench-") as tmpdir:
        tmp = Path(tmpdir)
        with Mosquitto(tmp / "broker") as broker, run_daemon(config(tmp, broker, workers, 16)) as daemon:
            results = Results()
            consumer = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-consumer", protocol=paho.MQTTv5)
            consumer.on_message = results.on_message
            consumer.connect("127.0.0.1", broker.port, keepalive=30)
            consumer.subscribe("edged/results/#", qos=1)
            consumer.subscribe("edged/errors/#", qos=1)
            consumer.loop_start()
            cameras = Cameras(broker, results)
            try:
                wait_until(lambda: mqtt_state(daemon) == "connected", 30, "the daemon's MQTT connection")
                # Warm-up: the first calls compile nothing (cached) but fill caches and the model.
                warm = [cameras.publish_one(i % CAMERAS) for i in range(8)]
                wait_until(lambda: len(results.done(warm)) == len(warm), DRAIN_SECONDS, "the warm-up")
                print(f"\n## MQTT ingest: {CAMERAS} cameras, 640x480 JPEG, classify + grayscale on every frame, "
                      f"{workers} pool workers, {seconds:.0f} s per step\n")
                print("| offered fps | achieved fps | p50 ms | p99 ms | frames | lost | RSS MB |")
                print("|---|---|---|---|---|---|---|")
                for rate in rates:
                    shas = cameras.run(rate, seconds)
                    window_end = time.monotonic()
                    wait_until(lambda s=shas: len(results.done(s)) == len(s), DRAIN_SECONDS, "the step's results")
                    lat = results.done(shas)
                    with results.lock:
                        first = min(results.sent[s] for s in shas)
                        in_window = sum(1 for s in shas
                                        if max(results.arrived[s][f] for f in FUNCTIONS) <= window_end)
                    achieved = in_window / (window_end - first)
                    print(f"| {rate:.0f} | {achieved:.1f} | {pct(lat, 0.5):.0f} | {pct(lat, 0.99):.0f} | "
                          f"{len(shas)} | {len(shas) - len(lat)} | {rss_mb(daemon):.0f} |", flush=True)
                # Saturation: a backlog, as after an outage; throughput is frames done per second.
                started, cpu, machine = time.monotonic(), cpu_seconds(daemon), machine_busy()
                shas = [cameras.publish_one(i % CAMERAS) for i in range(burst)]
                wait_until(lambda: len(results.done(shas)) == len(shas), DRAIN_SECONDS * 3, "the burst")
                elapsed = time.monotonic() - started
                cpu = cpu_seconds(daemon) - cpu
                busy, total = (after - before for after, before in zip(machine_busy(), machine, strict=True))
                lat = results.done(shas)
                print(f"\n## Saturation: a burst of {burst} frames\n")
                print("| frames | seconds | frames/s | p50 ms | p99 ms | lost | error results | RSS MB | daemon CPU "
                      "| machine busy |")
                print("|---|---|---|---|---|---|---|---|---|---|")
                print(f"| {burst} | {elapsed:.1f} | {burst / elapsed:.1f} | {pct(lat, 0.5):.0f} | "
                      f"{pct(lat, 0.99):.0f} | {burst - len(lat)} | {results.errors} | {rss_mb(daemon):.0f} | "
                      f"{100 * cpu / elapsed:.0f}% | {100 * busy / total:.0f}% of {os.cpu_count()} CPUs |")
                print(f"\nmean end-to-end latency of the burst: {statistics.mean(lat):.0f} ms "
                      "(queueing included: the backlog waits in the broker)")
            finally:
                cameras.close()
                consumer.disconnect()
                consumer.loop_stop()


if __name__ == "__main__":
    main()
