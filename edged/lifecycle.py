"""Signals set an event: SIGTERM/SIGINT the staged shutdown the composition root runs, SIGHUP a reload."""

from __future__ import annotations

import asyncio
import logging
import signal

__all__ = ["install_signal_handlers", "reload_on_sighup"]

log = logging.getLogger(__name__)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; a second signal while stopping exits at once."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s while stopping: exiting now", signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)


def reload_on_sighup(reload: asyncio.Event) -> None:
    """SIGHUP (``systemctl reload``) sets ``reload``; several before it is handled make one reload."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        log.info("SIGHUP received: reloading the config")
        reload.set()

    loop.add_signal_handler(signal.SIGHUP, handle)
