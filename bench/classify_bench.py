"""classify benchmark: edged (HTTP and the `invoke` path) against the same model called natively.

All in one run, on the same photos (tests/data/chelsea.jpg 451x300 and coffee.jpg 600x400, alternating),
with 1 and 2 workers; the model gets one interpreter thread per worker everywhere (threads = 1):

  native   Python in this process: Pillow decode + convert("RGB") + resize((224, 224), BILINEAR),
           float32 tensor, interpreter set_tensor/invoke/get_tensor, top-5. One interpreter per thread.
  invoke   what `edged invoke classify FILE` does per image, in this process: FunctionPool.decode_and_call_sync
           (on the calling thread: host decode, fresh Wasm instance, resize in the guest, WASI-NN, JSON).
  http     POST /v1/functions/classify to a real daemon (`python -m edged run`, a subprocess) over
           keep-alive connections, one client thread per worker; includes the HTTP round trip and the
           durable store commit of the result (SQLite, synchronous=FULL: an fsync per request), with
           state_dir on disk (a temporary directory).
  http-shm the same with state_dir in /dev/shm: the difference is the cost of that fsync (not in --quick).
  native-http  the native code behind a plain aiohttp server (bench/native_server.py, a subprocess; no
           sandbox, no store), same client: context for the HTTP modes, not a target.

A worker count of N means N pool workers and N client threads (native: N threads). Each mode runs in
rounds, interleaved with the others, so slow drift on the machine hits every mode alike. Prints a
table (p50, p99, images/s) and the two target ratios; asserts nothing.

edged's classify declares ``max_frame = [224, 224]`` and ``resize = "bilinear"`` as config/edged.toml ships
it (the host resizes, Pillow's bilinear as the guest would; the guest's resize is then a copy): a JPEG at
least twice that size is decoded drafted (the photos as they are, 451x300 and 600x400, are not; ``--size 1920x1080``
resizes them to a camera's size first, JPEG quality 90). The native baselines decode at full size, as the
plain Pillow code they stand for does.

    .venv/bin/python bench/classify_bench.py [--requests 300] [--rounds 5] [--size WxH] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edged.inference.tflite import ModelRegistry, load_backend
from edged.malloc import pin_mmap_threshold
from edged.settings import FunctionSettings, ModelSettings, PoolSettings
from edged.wasm.host.nn import NnHost
from edged.wasm.pool import FunctionPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.configs import daemon_config, write_config  # noqa: E402
from tests.daemon import Daemon  # noqa: E402

MODEL_DIR = ROOT / "functions" / "classify" / "model"
MODEL = MODEL_DIR / "efficientnet_lite0.tflite"
LABELS = MODEL_DIR / "labels.txt"
WASM = ROOT / "functions" / "classify" / "classify.wasm"
PHOTOS = [ROOT / "tests" / "data" / "chelsea.jpg", ROOT / "tests" / "data" / "coffee.jpg"]
NAME = "efficientnet_lite0"
MAX_PIXELS = 40_000_000
#: classify's need and who resizes to it, as config/edged.toml declares them
MAX_FRAME = (224, 224)
RESIZE = "bilinear"

#: (photo index) -> latency seconds, run by one client thread
Job = Callable[[int], None]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def drive(make_job: Callable[[int], Job], workers: int, total: int) -> tuple[list[float], float]:
    """``total`` requests spread over ``workers`` threads (each with its own job); latencies and wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[Exception] = []
    per_thread = total // workers

    def run(worker: int) -> None:
        job = make_job(worker)
        mine: list[float] = []
        try:
            for i in range(per_thread):
                t0 = time.perf_counter()
                job((i + worker) % len(PHOTOS))
                mine.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 (re-raised by the driving thread below)
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return latencies, wall


# -- native ------------------------------------------------------------------------------------------------

#: The phases of one call, in the order the side-by-side table prints them: (key, what it is).
PHASES = (
    ("decode", "decode + resize to 224x224 (edged: the host, drafted where it pays)"),
    ("instantiate", "fresh instance (Store, limits, WASI, link, instantiate)"),
    ("guest", "own work: float tensor from RGB8, top-5, JSON (edged: in the guest, incl. its host calls)"),
    ("set_input", "copy the tensor into the interpreter (edged: WASI-NN set_input)"),
    ("invoke", "TFLite invoke (edged: WASI-NN compute)"),
    ("get_output", "copy the scores out (edged: WASI-NN get_output)"),
    ("result", "the result object (edged: output bounds, JSON check)"),
)


def native_jobs(data: list[bytes], labels: list[str], phases: list[dict[str, float]]) -> Callable[[int], Job]:
    """Native Pillow + TFLite jobs; each call appends its phases (seconds, PHASES' keys) to ``phases``."""
    backend = load_backend("auto")
    content = MODEL.read_bytes()
    interpreters: dict[int, Any] = {}

    def make(worker: int) -> Job:
        if worker not in interpreters:
            interpreter = backend.factory(model_content=content, num_threads=1)
            interpreter.allocate_tensors()
            interpreters[worker] = interpreter
        interpreter = interpreters[worker]
        inp = interpreter.get_input_details()[0]["index"]
        out = interpreter.get_output_details()[0]["index"]

        def job(k: int) -> None:
            t0 = time.perf_counter()
            with Image.open(io.BytesIO(data[k])) as img:
                rgb = img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            t1 = time.perf_counter()
            tensor = np.asarray(rgb, np.float32)[None]
            t2 = time.perf_counter()
            interpreter.set_tensor(inp, tensor)
            t3 = time.perf_counter()
            interpreter.invoke()
            t4 = time.perf_counter()
            scores = interpreter.get_tensor(out)[0]
            t5 = time.perf_counter()
            top = np.argsort(-scores)[:5]
            json.dumps({"label": labels[top[0]], "top": [[labels[i], float(scores[i])] for i in top]})
            t6 = time.perf_counter()
            phases.append({"decode": t1 - t0, "instantiate": 0.0, "guest": (t2 - t1) + (t6 - t5),
                           "set_input": t3 - t2, "invoke": t4 - t3, "get_output": t5 - t4, "result": 0.0})

        return job

    return make


# -- edged, in process (the invoke path) ---------------------------------------------------------------------

#: time spent in each WASI-NN host call by the calling thread during its current call (the invoke path)
_NN = threading.local()
NN_CALLS = ("_set_input", "_compute", "_get_output")


def _timed(name: str) -> Callable[..., Any]:
    original = getattr(NnHost, name)

    def timed(self: NnHost, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args)
        finally:
            spent = getattr(_NN, "spent", None)
            if spent is not None:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

    return timed


for _name in NN_CALLS:
    setattr(NnHost, _name, _timed(_name))


class InvokePath:
    def __init__(self, workers: int, cache: Path) -> None:
        fn = FunctionSettings(module=WASM, models=(NAME,), memory_mb=256, max_frame=MAX_FRAME, resize=RESIZE)
        self.registry = ModelRegistry({NAME: ModelSettings(path=MODEL, labels=LABELS, threads=1)},
                                      max_interpreters=workers)
        self.registry.load()
        self.pool = FunctionPool({"classify": fn}, PoolSettings(workers=workers, queue=workers),
                                 cache, extension=NnHost(self.registry))
        self.pool.start()
        #: per call, seconds: decode-and-call wall, CallResult duration / instantiate / run, then the time in
        #: WASI-NN set_input / compute / get_output (host side, incl. the copies in and out of guest memory)
        self.phases: list[tuple[float, ...]] = []
        self._lock = threading.Lock()

    def jobs(self, data: list[bytes]) -> Callable[[int], Job]:
        def make(worker: int) -> Job:
            def job(k: int) -> None:
                spent: dict[str, float] = {}
                _NN.spent = spent
                t0 = time.perf_counter()
                result = self.pool.decode_and_call_sync(data[k], MAX_PIXELS, "classify")
                t1 = time.perf_counter()
                _NN.spent = None
                assert result.json is not None
                with self._lock:
                    self.phases.append((t1 - t0, result.duration_ms / 1000, result.instantiate_ms / 1000,
                                        result.run_ms / 1000, *(spent.get(n, 0.0) for n in NN_CALLS)))

            return job

        return make

    def breakdown(self) -> list[dict[str, float]]:
        """Each call's phases in seconds, keyed as PHASES."""
        return [{"decode": wall - duration, "instantiate": inst, "guest": run - set_input - compute - get_output,
                 "set_input": set_input, "invoke": compute, "get_output": get_output,
                 "result": duration - inst - run}
                for wall, duration, inst, run, set_input, compute, get_output in self.phases]

    def close(self) -> None:
        self.pool.close()
        self.registry.close()


# -- edged, over HTTP ----------------------------------------------------------------------------------------

class Server:
    """A server subprocess that logs "listening on http://HOST:PORT"; jobs POST photos to it."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.daemon = Daemon(proc)  # reads (and so drains) its output on a thread
        self.daemon.wait_listening(60)
        self.host, self.port = self.daemon.host, self.daemon.port

    def jobs(self, data: list[bytes]) -> Callable[[int], Job]:
        def make(worker: int) -> Job:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

            def job(k: int) -> None:
                conn.request("POST", "/v1/functions/classify", body=data[k],
                             headers={"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")

            return job

        return make

    def close(self) -> None:
        self.daemon.stop(timeout=20)


def edged_daemon(workers: int, tmp: Path, state_dir: Path) -> Server:
    """`python -m edged run` with N workers and the classify function; state_dir on disk or in /dev/shm."""
    cfg = write_config(tmp / f"edged-{workers}-{state_dir.name}.toml", daemon_config(
        state_dir, device_id="bench", log_level="WARNING",
        pool={"workers": workers, "queue": workers * 4},
        models={NAME: {"path": MODEL, "labels": LABELS, "threads": 1}},
        functions={"classify": {"module": WASM, "models": [NAME], "memory_mb": 256, "max_frame": list(MAX_FRAME),
                                 "resize": RESIZE}}))
    return Server([sys.executable, "-m", "edged", "run", "--config", str(cfg)], {"EDGED_LOG_LEVEL": "INFO"})


def native_server(workers: int) -> Server:
    """bench/native_server.py: the model behind a plain aiohttp server (no sandbox, no store)."""
    return Server([sys.executable, str(Path(__file__).with_name("native_server.py")), str(workers)])


def print_phases(workers: int, native: list[dict[str, float]], invoke: list[dict[str, float]],
                 native_p50: float, invoke_p50: float) -> None:
    """One classify call, native and edged's invoke path side by side, phase by phase (medians, ms).

    Medians of phases do not add up to the median of the whole; the last row gives the whole's p50."""
    print(f"\n#### One classify call, phase by phase: native vs edged invoke, {workers} worker(s) (median ms)\n")
    print("| phase | native | edged invoke | edged - native |")
    print("| --- | --- | --- | --- |")
    for key, what in PHASES:
        n = pct([p[key] for p in native], 0.5) * 1000
        e = pct([p[key] for p in invoke], 0.5) * 1000
        print(f"| {what} | {n:.2f} | {e:.2f} | {e - n:+.2f} |")
    print(f"| whole call, p50 | {native_p50:.2f} | {invoke_p50:.2f} | {invoke_p50 - native_p50:+.2f} |\n")


def invoke_cli_once(cfg: Path) -> float:
    """One `edged invoke` process, start to finish (process start, imports, model load, one call)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edged", "--config", str(cfg), "invoke", "classify", str(PHOTOS[0])],
                   check=True, capture_output=True, timeout=120)
    return time.perf_counter() - t0


def camera_jpeg(path: Path, size: str) -> bytes:
    """The photo at ``size`` (``WIDTHxHEIGHT``), as a camera would send it (JPEG quality 90)."""
    width, height = (int(side) for side in size.split("x"))
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat), while this benchmark itself is idle."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return idle, sum(fields)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(max_busy: float, limit: float = 120.0) -> float:
    """Wait (bounded) until other processes leave the CPUs alone; return the busy share at the start."""
    deadline = time.monotonic() + limit
    busy = busy_fraction()
    while busy >= max_busy and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per mode, worker count and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--size", help="resize the photos to WIDTHxHEIGHT first (JPEG quality 90)")
    parser.add_argument("--quick", action="store_true",
                        help="60 requests x 2 rounds, 1 worker, no idle wait; no http-shm daemon, no CLI processes")
    parser.add_argument("--max-busy", type=float, default=0.1,
                        help="before each round wait (up to 120 s) until other processes use less than this share "
                             "of the CPUs")
    args = parser.parse_args()
    if args.quick:  # its own sizes, where not given on the command line
        for name, value in (("requests", 60), ("rounds", 2), ("warmup", 5), ("workers", "1"), ("max_busy", 1.01)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    pin_mmap_threshold()  # as `edged run` and `edged invoke` do (the servers in "http" modes do it themselves)
    worker_counts = [int(w) for w in args.workers.split(",")]
    data = [p.read_bytes() if args.size is None else camera_jpeg(p, args.size) for p in PHOTOS]
    labels = LABELS.read_text().splitlines()

    results: dict[tuple[str, int], list[tuple[list[float], float]]] = {}
    #: (mode, workers) -> each call's phases, for the side-by-side table
    breakdowns: dict[tuple[str, int], list[dict[str, float]]] = {}
    loads: list[float] = []
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # noqa: S108 (a private mkdtemp inside)
    with tempfile.TemporaryDirectory(prefix="classify-bench-") as tmp_name, \
            tempfile.TemporaryDirectory(prefix="classify-bench-", dir=shm) as shm_name:
        tmp = Path(tmp_name)
        for workers in worker_counts:
            native_phases = breakdowns.setdefault(("native", workers), [])
            native = native_jobs(data, labels, native_phases)
            invoke = InvokePath(workers, tmp / "cache")
            daemons = {"http": edged_daemon(workers, tmp, tmp / f"state-{workers}"),
                       "native-http": native_server(workers)}
            if not args.quick:  # the fsync's share: context, not a target
                daemons["http-shm"] = edged_daemon(workers, tmp, Path(shm_name) / f"state-{workers}")
            modes: dict[str, Callable[[int], Job]] = {"native": native, "invoke": invoke.jobs(data)}
            modes.update({name: d.jobs(data) for name, d in daemons.items()})
            try:
                for make in modes.values():
                    drive(make, workers, args.warmup * workers)
                for _ in range(args.rounds):
                    loads.append(wait_for_quiet(args.max_busy))
                    for name, make in modes.items():
                        results.setdefault((name, workers), []).append(drive(make, workers, args.requests))
            finally:
                for d in daemons.values():
                    d.close()
                invoke.close()
            breakdowns[("invoke", workers)] = invoke.breakdown()
        # A whole `edged invoke` process (imports, model load): context, not a target; quick runs skip it.
        cli = [] if args.quick or 1 not in worker_counts else [
            invoke_cli_once(tmp / "edged-1-state-1.toml") for _ in range(3)]

    print(f"\nclassify: {platform.machine()}, {os.cpu_count()} CPUs, {args.rounds} rounds x {args.requests} "
          f"requests per mode and worker count, photos {', '.join(p.name for p in PHOTOS)} alternating\n")
    print("| mode | workers | p50 ms | p99 ms | images/s |")
    print("| --- | --- | --- | --- | --- |")
    table: dict[tuple[str, int], dict[str, float]] = {}
    samples: dict[str, list[float]] = {}  # every latency in ms, for bench/report.py's distribution plots
    for (name, workers), runs in results.items():
        latencies = [x for lat, _ in runs for x in lat]
        samples[f"{name}/{workers}"] = [x * 1000 for x in latencies]
        count = sum(len(lat) for lat, _ in runs)
        wall = sum(w for _, w in runs)
        row = {"p50_ms": pct(latencies, 0.5) * 1000, "p99_ms": pct(latencies, 0.99) * 1000,
               "images_per_s": count / wall}
        table[(name, workers)] = row
    modes_order = [m for m in ("native", "invoke", "http", "http-shm", "native-http") if (m, worker_counts[0]) in table]
    for workers in worker_counts:
        for name in modes_order:
            row = table[(name, workers)]
            print(f"| {name} | {workers} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['images_per_s']:.1f} |")
    print()
    for name in [m for m in ("invoke", "http", "http-shm") if m in modes_order]:
        for workers in worker_counts:
            ratio = table[(name, workers)]["p50_ms"] / table[("native", workers)]["p50_ms"]
            print(f"{name} p50 / native p50, {workers} worker(s): {ratio:.3f}  (target <= 1.15)")
    ratios: dict[str, float] = {}
    for workers in worker_counts:
        def p50(name: str, w: int = workers) -> float:
            return table[(name, w)]["p50_ms"]

        ratios[f"http/native-http/{workers}"] = p50("http") / p50("native-http")
        if "http-shm" in modes_order:
            ratios[f"http-shm/native-http/{workers}"] = p50("http-shm") / p50("native-http")
        ratios[f"invoke/native/{workers}"] = p50("invoke") / p50("native")
        print(f"targets, {workers} worker(s): http / native-http {ratios[f'http/native-http/{workers}']:.3f} "
              f"(<= 1.10), invoke / native {ratios[f'invoke/native/{workers}']:.3f} (<= 1.05)")

        print(f"context, {workers} worker(s): native-http / native {p50('native-http') / p50('native'):.3f} "
              f"(the HTTP round trip alone), http / native-http {p50('http') / p50('native-http'):.3f} "
              f"(what edged adds behind the same HTTP: sandbox and durable commit)")
    if 1 in worker_counts and 2 in worker_counts:
        for name in modes_order:
            scale = table[(name, 2)]["images_per_s"] / table[(name, 1)]["images_per_s"]
            print(f"{name} images/s, 2 workers / 1 worker: {scale:.2f}  (target >= 1.7)")
    for workers in worker_counts:
        print_phases(workers, breakdowns[("native", workers)], breakdowns[("invoke", workers)],
                     table[("native", workers)]["p50_ms"], table[("invoke", workers)]["p50_ms"])
    print(f"CPU busy (other processes) before each round: {', '.join(f'{x:.0%}' for x in loads)}")
    if cli:
        print(f"\none `edged invoke classify chelsea.jpg` process, start to exit: "
              f"{', '.join(f'{c * 1000:.0f}' for c in cli)} ms")
    if args.json:
        args.json.write_text(json.dumps({f"{n}/{w}": row for (n, w), row in table.items()} | {
            "invoke_cli_process_ms": [c * 1000 for c in cli], "ratios": ratios, "photo_size": args.size,
            "cpu_busy_before_rounds": loads, "load_average": list(os.getloadavg()), "samples_ms": samples},
           indent=2))


if __name__ == "__main__":
    main()
