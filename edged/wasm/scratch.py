"""Per-worker scratch files for WASI stdio, bounded while the guest writes, and their directory's lifetime.

Files, not ``stdout_custom`` callbacks: those run on wasmtime's own threads and panicked at interpreter
exit (docs: /work/shared/FACTS.md). The files live in a tmpfs when there is one, where every byte is
memory charged to edged's cgroup, so what a guest writes is bounded *during* the call: the pool's epoch
ticker calls ``StdioWatch.check`` every tick, and a file holding more than its limit (stdout:
``max_output_bytes``, stderr: ``STDERR_LIMIT``) is cut back to the limit plus one byte. The extra byte
is how the call learns it overflowed (stdout: ``bad_output``; stderr: a warning). The guest's write
offset stays where it was, so later writes land past a hole and only allocated blocks (``st_blocks``)
count. Overshoot is bounded by write rate x the time between two checks: ~7 MB per stream at the
1.4 GB/s a tmpfs takes and a 5 ms tick; measured in tests on a loaded 2-core machine, where the ticker
waits for the GIL, 11-52 MB.

Why not a FIFO per stream, which bounds exactly: wasmtime opens the path itself in blocking mode, so a
full pipe blocks the guest inside a host write where no epoch can interrupt it; a FIFO needs a reader
draining it throughout every call (a thread competing for the GIL at GB/s) and a handshake at the end of
each call to know it has read everything. The ticker already runs every 5 ms and costs the call path
nothing: a stat per stream per tick.

Nothing outlives a crash either: each pool's root holds a lock file ``flock()``ed for the pool's life;
``make_scratch_root`` first removes ``edged-wasm-*`` roots whose lock is free (a killed process's), and
keeps those of live daemons.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from edged.wasm.host.log import log_lines

__all__ = [
    "ROOT_PREFIX",
    "STDERR_LIMIT",
    "Scratch",
    "StdioWatch",
    "make_scratch_root",
    "remove_scratch_root",
    "remove_stale_roots",
]

log = logging.getLogger(__name__)

#: stderr kept, read back and logged per call.
STDERR_LIMIT = 64 * 1024
ROOT_PREFIX = "edged-wasm-"
_LOCK = ".lock"
#: A root without a lock file is only removed once this old (it may be one being made right now).
_UNLOCKED_GRACE_SECONDS = 60.0
_PAGE = 4096
_roots_lock = threading.Lock()
_root_locks: dict[Path, int] = {}


def _scratch_parent() -> str | None:
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp below makes a private directory in it)
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def make_scratch_root() -> Path:
    """A private (0700) directory for this pool's workers, in /dev/shm when it is usable, locked for life.

    Stale roots of killed processes in the same place are removed first.
    """
    parent = _scratch_parent()
    remove_stale_roots(Path(parent or tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=parent))
    fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else can hold it
    with _roots_lock:
        _root_locks[root] = fd
    return root


def remove_scratch_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    with _roots_lock:
        fd = _root_locks.pop(root, None)
    if fd is not None:
        os.close(fd)


def remove_stale_roots(parent: Path) -> int:
    """Remove the ``edged-wasm-*`` roots in ``parent`` that no live process holds; return how many."""
    removed = 0
    for root in parent.glob(ROOT_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if _stale(root):
                shutil.rmtree(root, ignore_errors=True)
                removed += 1
    if removed:
        log.info("removed %d stale scratch directories of killed processes from %s", removed, parent)
    return removed


def _stale(root: Path) -> bool:
    try:
        fd = os.open(root / _LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # made by an older edged, or being made now
        return time.time() - root.stat().st_mtime > _UNLOCKED_GRACE_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live pool holds it
    finally:
        os.close(fd)  # also drops the lock just taken
    return True


def _read_head(path: Path, limit: int) -> tuple[bytes, int]:
    """At most ``limit`` bytes from the start of ``path``, and the file's whole size.

    Sized by fstat, so a small output is not read into a buffer of ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        want = min(size, limit)
        chunks = []
        while want > 0:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks), size
    finally:
        os.close(fd)


class Scratch:
    """One worker's stdio files. Used by one thread at a time (and checked by the ticker meanwhile)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="worker-", dir=root))
        self.stdin = self.dir / "stdin"
        self.stdout = self.dir / "stdout"
        self.stderr = self.dir / "stderr"
        for path in (self.stdin, self.stdout, self.stderr):
            path.touch(mode=0o600)
        # The ticker's handles: the paths keep their inodes (wasmtime opens them with O_TRUNC, never replaces).
        self._out_fd = os.open(self.stdout, os.O_RDWR | os.O_CLOEXEC)
        self._err_fd = os.open(self.stderr, os.O_RDWR | os.O_CLOEXEC)
        #: The running call's stdout limit (its max_output_bytes); set before the call opens stdout.
        self.stdout_limit = 0
        #: Times a stream was cut back for being over its limit.
        self.cuts = 0
        self._lock = threading.Lock()
        self._stdio_used = False
        # Whether a WASI context may be writing these files (from ``armed`` to ``reset``): the ticker checks
        # them only then. Most calls have none (frame-v1 without WASI): no fstat per tick for them.
        self._armed = False
        self._closed = False

    def enforce_limits(self) -> None:
        """Cut a stream holding more than its limit back to limit + 1 byte (from the ticker thread)."""
        if not self._armed:  # read without the lock: a call arms it before its WASI context exists
            return
        with self._lock:
            if self._closed:
                return
            for fd, limit in ((self._out_fd, self.stdout_limit), (self._err_fd, STDERR_LIMIT)):
                if os.fstat(fd).st_blocks * 512 > limit + _PAGE:
                    os.ftruncate(fd, limit + 1)
                    self.cuts += 1

    def arm(self) -> None:
        """A WASI context is about to get these files: the ticker watches them until ``reset``."""
        self._armed = True

    def write_stdin(self, data: bytes) -> None:
        self._stdio_used = True
        with self.stdin.open("wb") as fh:
            fh.write(data)

    def stdout_size(self) -> int:
        return os.fstat(self._out_fd).st_size

    def read_stdout(self, limit: int) -> bytes | None:
        """stdout, or None when it is over ``limit`` bytes."""
        data, size = _read_head(self.stdout, limit)
        return None if size > limit else data

    def log_stderr(self, logger: logging.Logger) -> str:
        """Log the call's stderr line by line (at most STDERR_LIMIT bytes) and return that text."""
        if os.fstat(self._err_fd).st_size == 0:
            return ""
        data, size = _read_head(self.stderr, STDERR_LIMIT)
        text = data.decode("utf-8", errors="replace")
        log_lines(logger, logging.INFO, text)
        if size > STDERR_LIMIT:
            logger.warning("stderr was over %d bytes; only the first %d were kept and logged",
                           STDERR_LIMIT, STDERR_LIMIT)
        return text

    def reset(self) -> None:
        """Empty the files, so a big payload or a chatty guest does not keep tmpfs memory between calls
        (only after a call with a WASI context: without one, nothing could have written them)."""
        with self._lock:
            self._armed = False
            os.ftruncate(self._err_fd, 0)
            if self._stdio_used:  # only wasi-command calls have stdin and stdout
                os.truncate(self.stdin, 0)
                os.ftruncate(self._out_fd, 0)
                self._stdio_used = False

    def close(self) -> None:
        with self._lock:  # not while the ticker holds the descriptors: their numbers may be reused
            if self._closed:
                return
            self._closed = True
            os.close(self._out_fd)
            os.close(self._err_fd)


class StdioWatch:
    """Every worker's Scratch, for the ticker to check each tick."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scratches: list[Scratch] = []

    def add(self, scratch: Scratch) -> None:
        with self._lock:
            self._scratches.append(scratch)

    def discard(self, scratch: Scratch) -> None:
        """Stop watching ``scratch`` and close it (its directory is gone)."""
        with self._lock:
            if scratch in self._scratches:
                self._scratches.remove(scratch)
        scratch.close()

    def check(self) -> None:
        with self._lock:
            scratches = tuple(self._scratches)
        for scratch in scratches:
            try:
                scratch.enforce_limits()
            except OSError:  # closed while the pool stops
                continue

    def close(self) -> None:
        with self._lock:
            scratches, self._scratches = self._scratches, []
        for scratch in scratches:
            scratch.close()
