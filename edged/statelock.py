"""One daemon per state directory: an exclusive ``flock`` on ``state_dir/edged.lock``, held while it runs.

The lock file holds the owner's pid, so a second daemon can say who is in its way. The kernel drops the
lock when the process ends, however it ends (a SIGKILL or an OOM kill leaves no stale lock behind).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "StateDirBusy", "hold_state_dir"]

LOCK_NAME = "edged.lock"


class StateDirBusy(Exception):
    """Another process holds the state directory's lock; ``pid`` is its pid when it wrote one."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        owner = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(f"state directory {state_dir} is in use by another edged ({owner})")


def _holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


@contextmanager
def hold_state_dir(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir``'s lock for the block (creating the directory); StateDirBusy when another has it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: the pid in the file is the holder's until this process owns the lock.
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirBusy(state_dir, _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Closing the descriptor releases the lock; the file stays (removing it would race a new owner).
        os.close(fd)
