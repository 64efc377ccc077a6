"""Start to ``/readyz`` 200 under emulated aarch64: the installed bundle inside ``make cross-test``'s rootfs.

The rootfs is the arm64 Debian 12 that cross/emulated_test.sh keeps in ``$CROSS_WORK`` (default
build/cross/); it is never made here (``make cross-test`` makes it, ~2.5 min, as root). This script builds
the bundle of this tree (cross/bundle.sh), installs it in the rootfs with its own install.sh (again only
when the bundle changed), copies in bench/start_bench.py with the test helpers, the modules and the model,
and runs start_bench there through qemu-user: same config, cold then warm starts, the installed
``edged`` (byte-compiled by pip), not the source tree. It also times a bare ``python -c pass`` and
``python -c "import aiohttp"`` under qemu and natively, to show how much of the figure is emulation.

Needs root (chroot, mounting /proc) and qemu-aarch64 registered in binfmt_misc. Without them, or without
the rootfs, ``measure`` returns ``{"skipped": reason}`` and start_bench prints it instead of a table.

``--installed PYTHON`` skips the bundle and the install and uses a venv already in the rootfs (a path
inside it), e.g. the one ``make cross-test`` left: ``/tmp/edged-test/root/opt/edged/.venv/bin/python``.

    sudo .venv/bin/python bench/start_aarch64.py [--runs 2] [--json FILE] [--installed PYTHON]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROOTFS_NAME = "rootfs-bookworm-arm64"
#: Inside the rootfs: the bundle, the install prefix and the bench's copy of the repo.
GUEST = "/tmp/edged-startbench"
VENV = f"{GUEST}/root/opt/edged/.venv/bin/python"
TIMEOUT = 3600.0
NOT_MEASURED = "not measured: no arm64 rootfs, run make cross-test (CROSS_WORK={work})"
#: What the guest copy of the repo needs: the bench, its helpers, the modules and the model.
COPIED = ("bench/start_bench.py", "bench/start_floor.py", "tests/configs.py", "tests/daemon.py", "tests/waiting.py")


def cross_work() -> Path:
    return Path(os.environ.get("CROSS_WORK") or ROOT / "build" / "cross")


def why_not() -> str | None:
    """Why the emulated start cannot be measured here, or None when it can."""
    work = cross_work()
    if not (work / ROOTFS_NAME / ".edged-rootfs").exists():
        return NOT_MEASURED.format(work=work)
    if os.geteuid() != 0:
        return "not measured: needs root (chroot into the arm64 rootfs)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "not measured: qemu-aarch64 is not registered in binfmt_misc (make cross-test registers it)"
    return None


def _chroot(rootfs: Path, script: str, timeout: float = TIMEOUT) -> str:
    command = ["chroot", str(rootfs), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
               "LANG=C.UTF-8", "/bin/bash", "-c", f"set -euo pipefail; {script}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"in the arm64 rootfs, `{script}` failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout


def _install(rootfs: Path, scratch: Path) -> None:
    """This tree's bundle installed at GUEST/root, unless the same bundle (by MANIFEST) already is."""
    subprocess.run([str(ROOT / "cross" / "bundle.sh"), str(scratch)], check=True, capture_output=True,
                   timeout=TIMEOUT)
    guest = rootfs / GUEST.lstrip("/")
    staged = scratch / "unpacked"
    staged.mkdir()
    subprocess.run(["tar", "-C", str(staged), "-xzf", str(scratch / "edged-aarch64.tar.gz")], check=True)
    manifest = (staged / "edged-aarch64" / "MANIFEST").read_bytes()
    installed = guest / "edged-aarch64" / "MANIFEST"
    if installed.exists() and installed.read_bytes() == manifest and (rootfs / VENV.lstrip("/")).exists():
        return
    shutil.rmtree(guest, ignore_errors=True)
    guest.mkdir(parents=True)
    shutil.move(staged / "edged-aarch64", guest / "edged-aarch64")
    _chroot(rootfs, f"cd {GUEST}/edged-aarch64 && DESTDIR={GUEST}/root ./install.sh >/dev/null")


def _copy_repo(rootfs: Path) -> None:
    repo = rootfs / GUEST.lstrip("/") / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    for name in COPIED:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    for fn in (ROOT / "functions").iterdir():
        for wasm in fn.glob("*.wasm"):
            (repo / "functions" / fn.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(wasm, repo / "functions" / fn.name / wasm.name)
    shutil.copytree(ROOT / "functions" / "classify" / "model", repo / "functions" / "classify" / "model")


def _seconds(command: list[str], runs: int) -> float:
    """Median wall seconds of ``command`` (a process start to its exit)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=TIMEOUT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def emulation(rootfs: Path, python: str, runs: int = 5) -> dict[str, dict[str, float]]:
    """``python -c pass`` and ``import aiohttp``, the installed venv under qemu against this venv natively."""
    guest = ["chroot", str(rootfs), python]
    native = [sys.executable]
    return {label: {"native_s": _seconds([*native, "-c", code], runs),
                    "emulated_s": _seconds([*guest, "-c", code], runs)}
            for label, code in (("python -c pass", "pass"), ("import aiohttp", "import aiohttp"))}


def measure(runs: int = 2, installed: str | None = None) -> dict[str, Any]:
    """The emulated start figures (start_bench's JSON shape plus ``emulation``), or ``{"skipped": why}``."""
    reason = why_not()
    if reason is not None:
        return {"skipped": reason}
    rootfs = cross_work() / ROOTFS_NAME
    scratch = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    mounted = False
    try:
        python = installed or VENV
        if installed is None:
            _install(rootfs, scratch)
        _copy_repo(rootfs)
        subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
        mounted = True
        _chroot(rootfs, f"cd {GUEST}/repo && {python} bench/start_bench.py --runs {runs} --settle 1 "
                        f"--start-timeout {TIMEOUT:.0f} "
                        f"--json {GUEST}/start.json")
        figures: dict[str, Any] = json.loads((rootfs / GUEST.lstrip("/") / "start.json").read_text())
        figures["machine"] = _chroot(rootfs, f"{python} -c 'import platform; print(platform.machine())'").strip()
        figures["emulation"] = emulation(rootfs, python)
        return figures
    finally:
        if mounted:
            subprocess.run(["umount", str(rootfs / "proc")], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def report(figures: dict[str, Any]) -> None:
    """The emulated figures as start_bench prints its own (a table report.py and bench/targets.py read)."""
    print("\n## Start to /readyz 200 under emulated aarch64 (qemu-user, the installed bundle)\n")
    if "skipped" in figures:
        print(figures["skipped"])
        return
    print("| start | runs | median s | min s | max s |\n|---|---|---|---|---|")
    for name, key in (("cold (empty module cache)", "cold_s"), ("warm (module cache filled)", "warm_s")):
        values = figures[key]
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    if "floor" in figures:  # a rootfs bench older than the floor has none
        from bench.start_bench import floor_table

        floor_table(figures["floor"], figures["warm_s"], " — emulated aarch64")
    print("\n| process | native x86_64 s | emulated aarch64 s | ratio |\n|---|---|---|---|")
    for label, pair in figures["emulation"].items():
        print(f"| `{label}` | {pair['native_s']:.3f} | {pair['emulated_s']:.3f} | "
              f"{pair['emulated_s'] / pair['native_s']:.1f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="cold starts and warm starts each")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--installed", help="a venv's python already installed in the rootfs (skips the install)")
    args = parser.parse_args()
    figures = measure(args.runs, args.installed)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
