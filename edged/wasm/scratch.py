"""Per-worker scratch files for WASI stdio: stdin, stdout and stderr, reused and emptied after each call.

Files, not ``stdout_custom`` callbacks: those run on wasmtime's own threads and panicked at interpreter
exit (docs: /work/shared/FACTS.md). The files live in a tmpfs when there is one. What is read back is
bounded (max_output_bytes for stdout, 64 KiB of stderr); what a guest can write during one call is bounded
only by its timeout, and is truncated right after the call.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from edged.wasm.host.log import log_lines

__all__ = ["STDERR_LIMIT", "Scratch", "make_scratch_root", "remove_scratch_root"]

log = logging.getLogger(__name__)

#: stderr read back and logged per call.
STDERR_LIMIT = 64 * 1024


def make_scratch_root() -> Path:
    """A private (0700) directory for this pool's workers, in /dev/shm when it is usable."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp below makes a private directory in it)
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
    return Path(tempfile.mkdtemp(prefix="edged-wasm-", dir=parent))


def remove_scratch_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


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
    """One worker's stdio files. Used by one thread at a time."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="worker-", dir=root))
        self.stdin = self.dir / "stdin"
        self.stdout = self.dir / "stdout"
        self.stderr = self.dir / "stderr"
        for path in (self.stdin, self.stdout, self.stderr):
            path.touch(mode=0o600)
        self._stdio_used = False

    def write_stdin(self, data: bytes) -> None:
        self._stdio_used = True
        with self.stdin.open("wb") as fh:
            fh.write(data)

    def read_stdout(self, limit: int) -> bytes | None:
        """stdout, or None when it is over ``limit`` bytes."""
        data, size = _read_head(self.stdout, limit)
        return None if size > limit else data

    def log_stderr(self, logger: logging.Logger) -> str:
        """Log the call's stderr line by line (at most STDERR_LIMIT bytes) and return that text."""
        if _size(self.stderr) == 0:
            return ""
        data, size = _read_head(self.stderr, STDERR_LIMIT)
        text = data.decode("utf-8", errors="replace")
        log_lines(logger, logging.INFO, text)
        if size > STDERR_LIMIT:
            logger.warning("stderr was %d bytes; only the first %d were logged", size, STDERR_LIMIT)
        return text

    def reset(self) -> None:
        """Empty the files, so a big payload or a chatty guest does not keep tmpfs memory between calls."""
        os.truncate(self.stderr, 0)
        if self._stdio_used:  # only wasi-command calls have stdin and stdout
            os.truncate(self.stdin, 0)
            os.truncate(self.stdout, 0)
            self._stdio_used = False
