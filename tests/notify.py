"""A real sd_notify socket for tests: the daemon sends its datagrams here (``NOTIFY_SOCKET``)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from types import TracebackType

from tests.waiting import wait_until

__all__ = ["NotifySocket"]


class NotifySocket:
    """A bound AF_UNIX datagram socket that keeps every message received, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._sock.close()

    def count(self, text: str) -> int:
        return sum(1 for m in self.messages if text in m)

    def wait_for(self, text: str, times: int = 1, timeout: float = 30) -> None:
        """Receive until ``times`` messages holding ``text`` have come; AssertionError after ``timeout``."""

        def enough() -> bool:
            if self.count(text) < times:
                with contextlib.suppress(TimeoutError):  # bounded by the socket's timeout
                    self.messages.append(self._sock.recv(4096).decode())
            return self.count(text) >= times

        wait_until(enough, timeout, lambda: f"{times} x {text} among {self.messages}", interval=0)
