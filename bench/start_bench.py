"""Start-up benchmark: process start to the first ``/readyz`` 200, with an empty and a warm module cache,
and the daemon's idle RSS with both functions and the model loaded. Prints a table; asserts nothing.

The real daemon (``python -m edged run``, tests/daemon.py) with grayscale and classify (EfficientNet-Lite0
through WASI-NN), HTTP only. "cold" starts on a fresh state directory, so every module is compiled;
"warm" starts again on the directory the previous start left (compiled modules come from its cache).
Idle RSS is read from /proc once the daemon has been ready and untouched for ``--settle`` seconds.

The daemon's Python sources are byte-compiled first (``compileall``), as ``pip install`` does on a device:
with ``PYTHONDONTWRITEBYTECODE`` set, every start would otherwise compile ~110 edged modules from source.
Beside each warm start (interleaved, one of each per round) it times the floor, bench/start_floor.py: the
bare interpreter, the imports serving cannot do without, and the same ready state (cached modules, model
validated, listening) with nothing of edged, in a table of its own.

``--tree DIR`` (repeatable) starts the daemon from other source trees too, one run of each in turn
(old/new side by side under the same load); the first tree's figures go to ``--json``. ``--aarch64``
measures the same starts inside the emulated arm64 Debian of ``make cross-test`` (bench/start_aarch64.py).

    .venv/bin/python bench/start_bench.py [--runs 3] [--settle 2] [--json FILE] [--tree DIR ...] [--aarch64]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.configs import daemon_config, write_config  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

CLASSIFY = ROOT / "functions" / "classify"
MODEL = CLASSIFY / "model" / "efficientnet_lite0.tflite"
START_SECONDS = 120.0


def config(path: Path, state_dir: Path) -> Path:
    return write_config(path, daemon_config(
        state_dir, device_id="bench", log_level="INFO",
        functions={"grayscale": {"module": ROOT / "functions" / "grayscale" / "grayscale.wasm"},
                   "classify": {"module": CLASSIFY / "classify.wasm", "memory_mb": 256,
                                "models": ["efficientnet_lite0"]}},
        models={"efficientnet_lite0": {"path": MODEL,
                                       "labels": CLASSIFY / "model" / "labels.txt"}}))


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process has used: less noisy than wall time under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(tree: Path) -> dict[str, str]:
    # The environment a service manager gives the daemon: no CA bundle overrides from this shell.
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))
    return env


def start_once(cfg: Path, settle: float, tree: Path = ROOT, timeout: float = START_SECONDS,
               command: list[str] | None = None) -> tuple[float, float, float]:
    """One start: seconds from spawn to the first /readyz 200, the CPU seconds the daemon used until then,
    and its idle RSS in MB after ``settle`` seconds. ``command`` starts something else that logs where it
    listens as the daemon does (the floor)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command or [sys.executable, "-m", "edged", "run", "--config", str(cfg)], cwd=tree,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_env(tree))
    daemon = Daemon(proc)
    try:
        daemon.wait_listening(timeout)
        wait_until(lambda: ready(daemon.url), timeout, "/readyz 200", interval=0.005)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid)
        # Idle: nothing to wait for but time itself (background loops settle); an Event never set bounds it.
        threading.Event().wait(settle)
        return seconds, cpu, rss_mb(proc.pid)
    finally:
        daemon.stop()


def run_once(command: list[str]) -> float:
    """Seconds from spawning ``command`` to its exit (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, check=True,
                   env=_env(ROOT), timeout=START_SECONDS)
    return time.perf_counter() - started


def floor_once(state_dir: Path, timeout: float) -> dict[str, float]:
    """The floor's three figures, one run each (bench/start_floor.py): the bare interpreter, the imports
    serving cannot do without, and the floor server from spawn to its first /readyz 200."""
    floor = [sys.executable, str(ROOT / "bench" / "start_floor.py")]
    seconds, _, _ = start_once(state_dir, 0.0, ROOT, timeout, command=[*floor, str(state_dir), str(MODEL)])
    return {"python_s": run_once([sys.executable, "-c", "pass"]),
            "imports_s": run_once([*floor, "--only-imports"]), "ready_s": seconds}


FLOOR_ROWS = (("`python -c pass` (the interpreter and site)", "python_s"),
              ("imports only: aiohttp.web, wasmtime, sqlite3, TFLite runtime + numpy", "imports_s"),
              ("floor server to /readyz 200: those imports + SQLite file + cached modules deserialised "
               "+ model validated (2 interpreters) + listen", "ready_s"))


def floor_table(floor: dict[str, list[float]], warm: list[float], label: str = "") -> None:
    """The floor beside edged's warm start (runs interleaved: one of each per round)."""
    print(f"\n#### Start floor: the same work with nothing of edged (bench/start_floor.py){label}\n")
    print("| process | runs | median s | min s | share of edged's warm median |\n|---|---|---|---|---|")
    edged_warm = statistics.median(warm)
    for name, key in (*FLOOR_ROWS, ("edged warm start to /readyz 200", "")):
        values = floor[key] if key else warm
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{statistics.median(values) / edged_warm:.0%} |")


def byte_compile(tree: Path) -> None:
    """The tree's edged package compiled to __pycache__, as an install compiles it (no-op when current)."""
    package = tree / "edged"
    if package.is_dir() and not compileall.compile_dir(package, quiet=1):
        raise SystemExit(f"cannot byte-compile {package}")


def table(label: str, cold: list[float], warm: list[float], cpu: list[float]) -> None:
    print(f"\n## Start to /readyz 200 (grayscale + classify with its model, HTTP only){label}\n")
    print("| start | runs | median s | min s | max s |\n|---|---|---|---|---|")
    for name, values in (("cold (empty module cache)", cold), ("warm (module cache filled)", warm)):
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    print(f"\nCPU seconds the daemon used until ready, warm: median {statistics.median(cpu):.2f} "
          f"({', '.join(f'{x:.2f}' for x in cpu)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="cold starts and warm starts each")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before RSS is read")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="also start the daemon from this source tree, in turn with this one (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=START_SECONDS,
                        help="seconds a start may take (emulated, a cold start compiles each module for minutes)")
    parser.add_argument("--aarch64", action="store_true",
                        help="also measure inside the emulated arm64 rootfs of make cross-test (start_aarch64.py)")
    args = parser.parse_args()
    trees = [ROOT, *(t.resolve() for t in args.tree)]
    for tree in trees:
        byte_compile(tree)
    cold: dict[Path, list[float]] = {t: [] for t in trees}
    warm: dict[Path, list[float]] = {t: [] for t in trees}
    rss: dict[Path, list[float]] = {t: [] for t in trees}
    cpu: dict[Path, list[float]] = {t: [] for t in trees}
    floor: dict[str, list[float]] = {key: [] for _, key in FLOOR_ROWS}
    with tempfile.TemporaryDirectory(prefix="edged-start-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for run in range(args.runs):
            for n, tree in enumerate(trees):
                cfg = config(tmp / f"edged-{run}-{n}.toml", tmp / f"state-{run}-{n}")
                seconds, _, _ = start_once(cfg, 0.0, tree, args.start_timeout)
                cold[tree].append(seconds)
                seconds, used, mb = start_once(cfg, args.settle, tree, args.start_timeout)
                warm[tree].append(seconds)
                cpu[tree].append(used)
                rss[tree].append(mb)
                if n == 0:  # the floor, on the cache this tree's warm start just used
                    for key, value in floor_once(tmp / f"state-{run}-{n}", args.start_timeout).items():
                        floor[key].append(value)
    for tree in trees:
        table("" if tree == ROOT else f" — tree {tree}", cold[tree], warm[tree], cpu[tree])
        print(f"\nidle RSS after a warm start and {args.settle:.0f} s idle: "
              f"median {statistics.median(rss[tree]):.1f} MB "
              f"({', '.join(f'{x:.1f}' for x in rss[tree])})")
    floor_table(floor, warm[ROOT])
    figures: dict[str, object] = {"cold_s": cold[ROOT], "warm_s": warm[ROOT], "idle_rss_mb": rss[ROOT],
                                  "warm_cpu_s": cpu[ROOT], "floor": floor,
                                  "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if args.aarch64:
        from bench.start_aarch64 import measure, report

        figures["aarch64"] = measure(args.runs)
        report(figures["aarch64"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
