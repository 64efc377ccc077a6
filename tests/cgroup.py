"""A real memory cgroup for tests: run a process under a memory limit and see whether it was OOM-killed.

``with memory_cgroup(512 * MiB) as cg:`` creates a child of the memory controller's root (cgroup v1
``/sys/fs/cgroup/memory/`` on a hybrid or legacy host, else cgroup v2), sets its limit and removes it
afterwards, killing what still runs in it. ``cg.prefix`` is a command prefix that moves the process into
the cgroup before it execs (``run_daemon(config, prefix=cg.prefix)``, or ``subprocess.run([*cg.prefix,
...])``); ``cg.oom_kills()`` and ``cg.max_usage()`` read the controller's own counters. Where there is
no writable memory controller (not root, a read-only /sys/fs/cgroup) the test is skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["MemoryCgroup", "memory_cgroup"]

_V1_ROOT = Path("/sys/fs/cgroup/memory")
_V2_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "edged-test-"
_names = itertools.count()
_GONE_SECONDS = 10.0


class MemoryCgroup:
    """One child cgroup with a memory limit (``version`` 1 or 2)."""

    def __init__(self, path: Path, version: int, limit: int) -> None:
        self.path = path
        self.version = version
        self.limit = limit

    @property
    def prefix(self) -> list[str]:
        """A command prefix: the shell writes its own pid into the cgroup, then execs the command."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this cgroup."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError(f"no oom_kill counter in {self.path / name} (kernel older than 4.13?)")

    def max_usage(self) -> int | None:
        """Peak memory charged to the cgroup in bytes (None on a v2 kernel without memory.peak)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except FileNotFoundError:
            return None


def _controller_root() -> tuple[Path, int] | None:
    if (_V1_ROOT / "memory.limit_in_bytes").exists():
        return _V1_ROOT, 1
    controllers = _V2_ROOT / "cgroup.subtree_control"
    if controllers.exists() and "memory" in controllers.read_text().split():
        return _V2_ROOT, 2
    return None


def _remove_stale(root: Path) -> None:
    """Children left by test processes that died before cleaning up (only empty ones can go)."""
    for child in root.glob(_PREFIX + "*"):
        pid = child.name.removeprefix(_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                child.rmdir()


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A fresh child cgroup limited to ``limit`` bytes (no swap); skips the test where none can be made."""
    found = _controller_root()
    if found is None or not os.access(found[0], os.W_OK):
        pytest.skip("no writable cgroup memory controller")
    root, version = found
    _remove_stale(root)
    path = root / f"{_PREFIX}{os.getpid()}-{next(_names)}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {root}: {exc}")
    group = MemoryCgroup(path, version, limit)
    try:
        if version == 1:
            (path / "memory.limit_in_bytes").write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            with contextlib.suppress(FileNotFoundError):
                (path / "memory.swap.max").write_text("0")
        yield group
    finally:
        _empty_and_remove(group)


def _empty_and_remove(group: MemoryCgroup) -> None:
    """SIGKILL what the test left running in the cgroup (only processes it started), then rmdir it."""
    deadline = time.monotonic() + _GONE_SECONDS
    while True:
        pids = group.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            with contextlib.suppress(OSError):
                group.path.rmdir()
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not remove {group.path}: still holds {pids}")
        time.sleep(0.02)
