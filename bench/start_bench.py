"""Start-up benchmark: process start to the first ``/readyz`` 200, with an empty and a warm module cache,
and the daemon's idle RSS with both functions and the model loaded. Prints a table; asserts nothing.

The real daemon (``python -m edged run``, tests/daemon.py) with grayscale and classify (EfficientNet-Lite0
through WASI-NN), HTTP only. "cold" starts on a fresh state directory, so every module is compiled;
"warm" starts again on the directory the previous start left (compiled modules come from its cache).
Idle RSS is read from /proc once the daemon has been ready and untouched for ``--settle`` seconds.

The daemon's Python sources are byte-compiled first (``compileall``), as ``pip install`` does on a device:
with ``PYTHONDONTWRITEBYTECODE`` set, every start would otherwise compile ~110 edged modules from source.
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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process has used: less noisy than wall time under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_once(cfg: Path, settle: float, tree: Path = ROOT,
               timeout: float = START_SECONDS) -> tuple[float, float, float]:
    """One start: seconds from spawn to the first /readyz 200, the CPU seconds the daemon used until then,
    and its idle RSS in MB after ``settle`` seconds."""
    # The environment a service manager gives the daemon: no CA bundle overrides from this shell.
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], cwd=tree,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
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
    for tree in trees:
        table("" if tree == ROOT else f" — tree {tree}", cold[tree], warm[tree], cpu[tree])
        print(f"\nidle RSS after a warm start and {args.settle:.0f} s idle: "
              f"median {statistics.median(rss[tree]):.1f} MB "
              f"({', '.join(f'{x:.1f}' for x in rss[tree])})")
    figures: dict[str, object] = {"cold_s": cold[ROOT], "warm_s": warm[ROOT], "idle_rss_mb": rss[ROOT],
                                  "warm_cpu_s": cpu[ROOT],
                                  "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if args.aarch64:
        from bench.start_aarch64 import measure, report

        figures["aarch64"] = measure(args.runs)
        report(figures["aarch64"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
