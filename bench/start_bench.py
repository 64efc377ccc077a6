"""Start-up benchmark: process start to the first ``/readyz`` 200, with an empty and a warm module cache,
and the daemon's idle RSS with both functions and the model loaded. Prints a table; asserts nothing.

The real daemon (``python -m edged run``, tests/daemon.py) with grayscale and classify (EfficientNet-Lite0
through WASI-NN), HTTP only. "cold" starts on a fresh state directory, so every module is compiled;
"warm" starts again on the directory the previous start left (compiled modules come from its cache).
Idle RSS is read from /proc once the daemon has been ready and untouched for ``--settle`` seconds.

    .venv/bin/python bench/start_bench.py [--runs 3] [--settle 2] [--json FILE]
"""

from __future__ import annotations

import argparse
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
START_SECONDS = 120.0


def config(path: Path, state_dir: Path) -> Path:
    return write_config(path, daemon_config(
        state_dir, device_id="bench", log_level="INFO",
        functions={"grayscale": {"module": ROOT / "functions" / "grayscale" / "grayscale.wasm"},
                   "classify": {"module": CLASSIFY / "classify.wasm", "memory_mb": 256,
                                "models": ["efficientnet_lite0"]}},
        models={"efficientnet_lite0": {"path": CLASSIFY / "model" / "efficientnet_lite0.tflite",
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


def start_once(cfg: Path, settle: float) -> tuple[float, float]:
    """One start: (seconds from spawn to the first /readyz 200, idle RSS in MB after ``settle`` seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    daemon = Daemon(proc)
    try:
        daemon.wait_listening(START_SECONDS)
        wait_until(lambda: ready(daemon.url), START_SECONDS, "/readyz 200", interval=0.005)
        seconds = time.perf_counter() - started
        # Idle: nothing to wait for but time itself (background loops settle); an Event never set bounds it.
        threading.Event().wait(settle)
        return seconds, rss_mb(proc.pid)
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="cold starts and warm starts each")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before RSS is read")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="edged-start-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for run in range(args.runs):
            cfg = config(tmp / f"edged-{run}.toml", tmp / f"state-{run}")
            seconds, _ = start_once(cfg, 0.0)
            cold.append(seconds)
            seconds, mb = start_once(cfg, args.settle)
            warm.append(seconds)
            rss.append(mb)
    print("\n## Start to /readyz 200 (grayscale + classify with its model, HTTP only)\n")
    print("| start | runs | median s | min s | max s |\n|---|---|---|---|---|")
    for label, values in (("cold (empty module cache)", cold), ("warm (module cache filled)", warm)):
        print(f"| {label} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    print(f"\nidle RSS after a warm start and {args.settle:.0f} s idle: median {statistics.median(rss):.1f} MB "
          f"({', '.join(f'{x:.1f}' for x in rss)})")
    if args.json:
        args.json.write_text(json.dumps({"cold_s": cold, "warm_s": warm, "idle_rss_mb": rss}, indent=2))


if __name__ == "__main__":
    main()
