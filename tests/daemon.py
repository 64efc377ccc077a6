"""Boot the real daemon (``python -m edged run --config …``) in a subprocess, for end-to-end tests.

``with run_daemon(config, env) as d:`` starts it, waits (bounded) for the log line
``listening on http://HOST:PORT`` to learn the HTTP port, and yields a ``Daemon`` (``.url``, ``.proc``,
``.log``). Leaving the block sends SIGTERM and kills the process if it has not exited in time. Use a
config with ``[http] port = 0`` so parallel daemons never collide.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.waiting import wait_until

__all__ = ["Daemon", "DaemonError", "run_daemon"]

REPO = Path(__file__).resolve().parents[1]
START_SECONDS = 30.0
STOP_SECONDS = 15.0
_LISTENING = re.compile(r"listening on http://(\S+):(\d+)")


class DaemonError(AssertionError):
    """The daemon did not start, or did not stop, as expected; carries the end of its log."""


class Daemon:
    """A running daemon: its process, its HTTP base URL and everything it logged so far."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.host = ""
        self.port = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self._lines.append(line)
            match = _LISTENING.search(line)
            if match and not self._listening.is_set():
                self.host, self.port = match.group(1), int(match.group(2))
                self._listening.set()

    def wait_listening(self, timeout: float = START_SECONDS) -> None:
        def listening() -> bool:
            if self._listening.is_set():
                return True
            if self.proc.poll() is not None:
                raise DaemonError(f"daemon exited with {self.proc.returncode} before listening:\n{self.tail()}")
            return False

        wait_until(listening, timeout, lambda: f"the daemon to listen; its log ends:\n{self.tail()}")

    def wait_log(self, text: str, timeout: float = START_SECONDS) -> None:
        """Wait until ``text`` appears in the log."""
        wait_until(lambda: text in self.log, timeout, lambda: f"{text!r} in the log, which ends:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            return "".join(self._lines[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a power cut, the OOM killer)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_SECONDS)
        self._close_pipe(STOP_SECONDS)

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``timeout``; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._close_pipe(timeout)
        return self.proc.returncode

    def _close_pipe(self, timeout: float) -> None:
        self._reader.join(timeout=timeout)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


@contextmanager
def run_daemon(config_path: Path, env: Mapping[str, str] | None = None, *,
               start_timeout: float = START_SECONDS, stop_timeout: float = STOP_SECONDS,
               cwd: Path | None = None, prefix: Sequence[str] = ()) -> Iterator[Daemon]:
    """Run ``python -m edged run --config config_path`` with ``env`` added to this environment.

    ``prefix`` goes before the command, e.g. ``tests.cgroup.MemoryCgroup.prefix`` to run it in a cgroup.
    """
    inherited = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "edged", "run", "--config", str(config_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=full_env, cwd=cwd or REPO,
    )
    daemon = Daemon(proc)
    try:
        daemon.wait_listening(start_timeout)
        yield daemon
    finally:
        daemon.stop(stop_timeout)
