"""sd_notify integration: READY, RELOADING, STATUS, WATCHDOG, STOPPING. A no-op when not run by systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import systemd.daemon as daemon

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify datagrams to $NOTIFY_SOCKET; failures are logged once, never raised."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._warned = False

    def send(self, *lines: str) -> bool:
        if not self.enabled:
            return False
        try:
            return bool(daemon.notify("\n".join(lines)))
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify failed: %s", exc)
                self._warned = True
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time systemd needs to match it to its reload request."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def watchdog_interval(self) -> float | None:
        """Half the watchdog timeout systemd asked for, in seconds, or None."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    async def watchdog_loop(self, interval: float) -> None:
        """Pings the watchdog while the event loop is alive; a stuck loop stops the pings."""
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
