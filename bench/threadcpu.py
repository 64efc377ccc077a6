"""CPU seconds per thread of a running process, grouped by what each thread does (a bench helper).

Python 3.11 leaves every thread's OS name as the program's, so ``/proc/PID/task/*/comm`` cannot tell a
pool worker from the store writer. ``named_threads_env`` gives a child process a ``sitecustomize`` that sets
each thread's OS name (``prctl(PR_SET_NAME)``, 15 bytes) to its Python name when it starts, and the main
thread's to ``main``; ``name_threads`` does the same in this process. ``sample`` then reads utime + stime
of every thread from /proc, and ``group`` folds them by the first matching name prefix.

Nothing of edged is changed: naming a thread costs one system call at its start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["CpuSampler", "group", "name_threads", "named_threads_env", "sample"]

_TICK = os.sysconf("SC_CLK_TCK")

_SITECUSTOMIZE = '''
import ctypes, threading
_prctl = ctypes.CDLL(None, use_errno=True).prctl
def _name(text):
    _prctl(15, ctypes.c_char_p(text.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
_inner = threading.Thread._bootstrap_inner
def _bootstrap_inner(self):
    _name(self.name)
    _inner(self)
threading.Thread._bootstrap_inner = _bootstrap_inner
_name("main")
'''


def name_threads() -> None:
    """Name this process's threads as ``named_threads_env`` names a child's (threads started from now on)."""
    exec(compile(_SITECUSTOMIZE, "<threadcpu>", "exec"), {})  # noqa: S102 - our own constant text


def named_threads_env(scratch: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment additions for a child Python whose threads should carry their names (``scratch`` keeps
    the sitecustomize; it must outlive the child's start)."""
    site = Path(tempfile.mkdtemp(prefix="threadcpu-", dir=scratch))
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = (env or os.environ).get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), path]))}


def sample(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each live thread of ``pid``, by thread name (summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


def group(cpu: Mapping[str, float], groups: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Fold ``cpu`` by ``groups`` ((label, name prefix), first match wins; unmatched threads: "other")."""
    out = {label: 0.0 for label, _ in groups}
    out["other"] = 0.0
    for name, seconds in cpu.items():
        label = next((label for label, prefix in groups if name.startswith(prefix)), "other")
        out[label] += seconds
    return out


class CpuSampler:
    """Per-thread CPU of one process between ``start`` and ``stop``, added up over several windows."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.total: dict[str, float] = {}
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = sample(self.pid)

    def stop(self) -> None:
        for name, seconds in sample(self.pid).items():
            self.total[name] = self.total.get(name, 0.0) + seconds - self._before.get(name, 0.0)
