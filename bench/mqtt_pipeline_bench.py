"""MQTT frames per second, edged against a native pipeline, with both functions on every frame.

One real mosquitto on loopback (tests/mosquitto.py), two pipelines subscribed to it, each on its own topic:
  edged   the real daemon (``python -m edged run``, mqtt_bench's config): grayscale and classify in the
          sandbox on every frame from ``cameras/+/image``, results committed to its store, then published
          on ``edged/results/...``; QoS 1, the frame acked only after its results are durable.
  native  what a Python service without edged would do (``native`` mode of this file, its own process):
          paho with manual acks (QoS 1, the same receive maximum), N worker threads, per frame one Pillow
          decode, grayscale (convert("L"), PNG at zlib level 1) and classify (bench/native_server.py's
          NativeClassifier: resize to 224x224, TFLite, top-5), both results published at QoS 1 on
          ``native/results/...``, then the ack. No sandbox, no store.

Four cameras publish bursts of the same unique 640x480 JPEGs (a counter in a COM segment) to each pipeline
in turn, several rounds interleaved. A frame is done when both results arrived; every frame sent must be
done (zero loss). Throughput is frames done per second from the first publish of a burst to its last result.
Prints a table; asserts nothing except that nothing was lost.

Then where the CPU goes: each process's threads carry their Python names (bench/threadcpu.py), their CPU
is read from /proc around every burst, and a second table gives CPU ms per frame done, by thread, edged
beside native (and the broker's, which serves both). edged's writer jobs and transactions per frame come
from its /metrics.

    .venv/bin/python bench/mqtt_pipeline_bench.py [--frames 200] [--rounds 3] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.mqtt_bench import (  # noqa: E402
    CAMERAS,
    FUNCTIONS,
    Results,
    base_jpeg,
    client,
    config,
    mqtt_state,
    pct,
    unique,
)
from bench.native_server import NativeClassifier  # noqa: E402
from bench.threadcpu import CpuSampler, group, name_threads, named_threads_env  # noqa: E402
from edged.malloc import pin_mmap_threshold  # noqa: E402
from tests.daemon import run_daemon  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

RECEIVE_MAXIMUM = 16  # mqtt_bench's config gives edged max_inflight = 16
DRAIN_SECONDS = 600.0
PIPELINES = ("edged", "native")
#: Thread name prefixes (bench/threadcpu.py) -> rows of the CPU table; first match wins.
EDGED_THREADS = (("event loop (MQTT, dispatch, publish)", "main"), ("pool workers (decode, calls)", "edged-wasm_"),
                 ("epoch ticker", "edged-wasm-epoc"), ("store writer", "edged.store_"))
NATIVE_THREADS = (("paho loop", "paho"), ("workers (decode, calls, publish)", "native_"), ("main", "main"))
#: edged's counters read from /metrics around its bursts, per frame.
COUNTERS = ("edged_store_commits_total", "edged_store_transactions_total", "edged_function_calls_total")


# -- the native pipeline (its own process) --------------------------------------------------------------------

class NativePipeline:
    def __init__(self, port: int, workers: int) -> None:
        self.classifier = NativeClassifier()
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="native")
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="native-pipeline", protocol=paho.MQTTv5,
                                  manual_ack=True)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.executor.submit(self.handle, msg)
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect("127.0.0.1", port, keepalive=30, properties=props)

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                    props: object) -> None:
        client.subscribe("native/+/image", qos=1)
        self.ready.set()

    def handle(self, msg: paho.MQTTMessage) -> None:
        try:
            data = msg.payload
            source = {"sha256": hashlib.sha256(data).hexdigest(), "topic": msg.topic}
            camera = msg.topic.split("/")[1]
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                out = io.BytesIO()
                img.convert("L").save(out, "PNG", compress_level=1)
                gray = {"content_type": "image/png", "bytes": len(out.getvalue())}
                classified = json.loads(self.classifier.classify_image(img))
            for function, result in (("grayscale", gray), ("classify", classified)):
                body = {"kind": "result", "function": function, "source": source, "result": result}
                self.client.publish(f"native/results/{camera}/{function}", json.dumps(body), qos=1)
        finally:
            self.client.ack(msg.mid, msg.qos)

    def serve(self) -> None:
        self.client.loop_start()
        if not self.ready.wait(30):
            raise SystemExit("native pipeline: no connection to the broker")
        print("native pipeline ready", flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin
        self.client.disconnect()
        self.client.loop_stop()
        self.executor.shutdown()


# -- the benchmark ---------------------------------------------------------------------------------------------

class Bursts:
    """Four cameras publishing unique frames to a pipeline's topic; a consumer collecting both pipelines' results."""

    def __init__(self, broker: Mosquitto, pipelines: tuple[str, ...]) -> None:
        self.results = Results()
        self.consumer = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-consumer", protocol=paho.MQTTv5)
        self.consumer.on_message = self.results.on_message
        self.consumer.connect("127.0.0.1", broker.port, keepalive=30)
        for topic in (f"{p}/{kind}/#" for p in pipelines for kind in ("results", "errors")):
            self.consumer.subscribe(topic, qos=1)
        self.consumer.loop_start()
        self.cameras = [client(broker, f"bench-cam{i}") for i in range(CAMERAS)]
        self.jpeg = base_jpeg()
        self.counter = 0

    def burst(self, pipeline: str, frames: int) -> tuple[float, list[float], int]:
        """Publish ``frames`` at once and wait for all results: (seconds, latencies ms, frames lost)."""
        prefix = "cameras" if pipeline == "edged" else pipeline
        shas = []
        started = time.monotonic()
        for i in range(frames):
            data = unique(self.jpeg, self.counter)
            self.counter += 1
            sha = hashlib.sha256(data).hexdigest()
            with self.results.lock:
                self.results.sent[sha] = time.monotonic()
            self.cameras[i % CAMERAS].publish(f"{prefix}/cam{i % CAMERAS}/image", data, qos=1)
            shas.append(sha)
        with contextlib.suppress(AssertionError):  # a timeout is reported as frames lost, below
            wait_until(lambda: len(self.results.done(shas)) == len(shas), DRAIN_SECONDS, f"{pipeline}'s results")
        latencies = self.results.done(shas)
        with self.results.lock:
            last = max((max(self.results.arrived[s][f] for f in FUNCTIONS) for s in shas
                        if all(f in self.results.arrived.get(s, {}) for f in FUNCTIONS)), default=time.monotonic())
        return last - started, latencies, len(shas) - len(latencies)

    def close(self) -> None:
        for c in (*self.cameras, self.consumer):
            c.disconnect()
            c.loop_stop()


def counters(url: str) -> dict[str, float]:
    """edged's COUNTERS now (summed over labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def edged_config(tmp: Path, broker: Mosquitto, workers: int, name: str) -> Path:
    """mqtt_bench's configuration; an edged pipeline other than "edged" reads ``{name}/+/image`` and
    publishes under ``{name}/``."""
    if name == "edged":
        return config(tmp, broker, workers, 16)
    (tmp / name).mkdir()
    return config(tmp / name, broker, workers, 16, topic=f"{name}/+/image", prefix=name, client_id=f"{name}-bench")


def measure(frames: int, rounds: int, workers: int,
            baseline: Path | None) -> tuple[dict[str, dict[str, object]], dict[str, Any]]:
    """The throughput rows by pipeline, and where the CPU went (per frame done)."""
    pipelines = ("edged", "baseline", "native") if baseline is not None else PIPELINES
    daemons = [p for p in pipelines if p != "native"]
    runs: dict[str, list[tuple[float, list[float], int]]] = {p: [] for p in pipelines}
    with tempfile.TemporaryDirectory(prefix="edged-mqtt-pipeline-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        named = named_threads_env(tmp)
        broker = stack.enter_context(Mosquitto(tmp / "broker"))
        running = {p: stack.enter_context(run_daemon(edged_config(tmp, broker, workers, p), named,
                                                     cwd=baseline if p == "baseline" else None)) for p in daemons}
        native = subprocess.Popen([sys.executable, __file__, "native", "--port", str(broker.port),
                                   "--workers", str(workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        bursts = Bursts(broker, pipelines)
        assert broker.proc is not None
        cpu = {p: CpuSampler(running[p].proc.pid if p in running else native.pid) for p in pipelines}
        brokers = {p: CpuSampler(broker.proc.pid) for p in pipelines}
        counted = {p: dict.fromkeys(COUNTERS, 0.0) for p in daemons}
        try:
            assert native.stdout is not None
            assert native.stdout.readline().strip() == "native pipeline ready"
            for daemon in running.values():
                wait_until(lambda d=daemon: mqtt_state(d) == "connected", 30, "the daemon's MQTT connection")
            for pipeline in pipelines:  # warm-up: model, caches, first instances
                bursts.burst(pipeline, 2 * CAMERAS)
            for _ in range(rounds):
                for pipeline in pipelines:
                    before = counters(running[pipeline].url) if pipeline in running else {}
                    cpu[pipeline].start()
                    brokers[pipeline].start()
                    runs[pipeline].append(bursts.burst(pipeline, frames))
                    cpu[pipeline].stop()
                    brokers[pipeline].stop()
                    if before:
                        for name, value in counters(running[pipeline].url).items():
                            counted[pipeline][name] += value - before[name]
        finally:
            bursts.close()
            assert native.stdin is not None
            native.stdin.close()
            native.wait(30)
    out: dict[str, dict[str, object]] = {}
    for pipeline, results in runs.items():
        latencies = [x for _, lat, _ in results for x in lat]
        seconds = sum(s for s, _, _ in results)
        done = len(latencies)
        out[pipeline] = {"frames": frames * rounds, "done": done, "lost": sum(lost for _, _, lost in results),
                         "seconds": seconds, "fps": done / seconds if seconds else 0.0,
                         "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99), "latencies_ms": latencies}
    per_frame = {p: 1000 / max(1, len(runs[p]) * frames - sum(lost for _, _, lost in runs[p])) for p in pipelines}
    breakdown: dict[str, Any] = {
        "threads_ms": {p: {k: v * per_frame[p] for k, v in
                           group(cpu[p].total, NATIVE_THREADS if p == "native" else EDGED_THREADS).items()}
                       for p in pipelines},
        "broker_ms": {p: sum(brokers[p].total.values()) * per_frame[p] for p in pipelines},
        "per_frame": {p: {k: v * per_frame[p] / 1000 for k, v in counted[p].items()} for p in daemons},
    }
    return out, breakdown


def print_breakdown(breakdown: dict[str, Any]) -> None:
    threads: dict[str, dict[str, float]] = breakdown["threads_ms"]
    daemons = [p for p in threads if p != "native"]
    native = list(threads["native"].items())
    print("\n### Where the CPU goes: ms of CPU per frame done, by thread (user + system, from /proc), same bursts\n")
    print("| edged thread | " + " | ".join(f"{p} ms/frame" for p in daemons) + " | native thread | native ms/frame |")
    print("|---|" + "---|" * len(daemons) + "---|---|")
    labels = list(threads["edged"])
    for i in range(max(len(labels), len(native))):
        left = (f"{labels[i]} | " + " | ".join(f"{threads[p][labels[i]]:.1f}" for p in daemons)
                if i < len(labels) else " | " * len(daemons))
        right = f"{native[i][0]} | {native[i][1]:.1f}" if i < len(native) else " | "
        print(f"| {left} | {right} |")
    totals = " | ".join(f"**{sum(threads[p].values()):.1f}**" for p in daemons)
    print(f"| **process total** | {totals} | **process total** | **{sum(threads['native'].values()):.1f}** |")
    broker = breakdown["broker_ms"]
    print("| mosquitto (its share) | " + " | ".join(f"{broker[p]:.1f}" for p in daemons)
          + f" | mosquitto (its share) | {broker['native']:.1f} |")
    for p, counts in breakdown["per_frame"].items():
        print(f"\n{p} per frame: {counts['edged_store_commits_total']:.2f} store writer jobs (group commit), "
              f"{counts['edged_store_transactions_total']:.2f} transactions, "
              f"{counts['edged_function_calls_total']:.2f} function calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "native"])
    parser.add_argument("--frames", type=int, default=200, help="frames per burst")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per pipeline, interleaved")
    parser.add_argument("--workers", type=int, default=0, help="workers in both pipelines (default: CPU count)")
    parser.add_argument("--port", type=int, default=0, help="(native mode) the broker's port")
    parser.add_argument("--baseline", type=Path, help="also run the daemon of this source tree (an older commit's "
                        "`git archive`), interleaved, as the pipeline 'baseline'")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    pin_mmap_threshold()  # as `edged run` does, so both pipelines allocate alike
    if args.mode == "native":
        name_threads()
        NativePipeline(args.port, workers).serve()
        return
    out, breakdown = measure(args.frames, args.rounds, workers, args.baseline)
    print(f"\n## MQTT, both functions on every frame: edged vs a native pipeline ({CAMERAS} cameras, 640x480 JPEG, "
          f"QoS 1, {workers} workers each, {args.rounds} bursts of {args.frames} frames each, interleaved)\n")
    print("| pipeline | frames | done | lost | frames/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for pipeline, row in out.items():
        print(f"| {pipeline} | {row['frames']} | {row['done']} | {row['lost']} | {row['fps']:.1f} | "
              f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} |")
    ratio = float(out["edged"]["fps"]) / float(out["native"]["fps"] or 1)  # type: ignore[arg-type]
    print(f"\nedged / native frames/s: {ratio:.2f} (target >= 0.8); latencies include the wait in the broker")
    if "baseline" in out:
        print(f"baseline / native frames/s: {float(out['baseline']['fps']) / float(out['native']['fps'] or 1):.2f}"  # type: ignore[arg-type]
              f" (baseline: {args.baseline})")
    print_breakdown(breakdown)
    if args.json:
        args.json.write_text(json.dumps({"workers": workers, "ratio": ratio, **out, "cpu": breakdown}, indent=2))
    if any(row["lost"] for row in out.values()):
        raise SystemExit("frames lost: " + ", ".join(f"{p} {r['lost']}" for p, r in out.items()))


if __name__ == "__main__":
    main()
