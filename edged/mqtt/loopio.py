"""One paho client's socket, driven from the asyncio loop.

The socket is registered with ``add_reader``, and paho's ``loop_read``/``loop_write`` are called from the
loop, so every paho callback (messages, PUBACKs, CONNACK) runs on the loop thread. Reading can be paused:
that is how the ingest side applies TCP backpressure to the broker.

Writes: when paho queues a packet, one ``loop_write`` is scheduled for the end of the loop's current
round, so the packets queued in that round (acks, results) go out together; a writer is registered only
when the socket would block. That saves two ``epoll_ctl`` and a loop round per packet.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

__all__ = ["LoopSocket"]


class LoopSocket:
    """Attaches the client's socket to the running loop and detaches it when paho closes it."""

    def __init__(self, client: paho.Client, on_closed: Callable[[], None]) -> None:
        self._client = client
        self._on_closed = on_closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading_paused = False
        self._write_due = False
        self._writer_added = False
        #: The attached socket; None while detached.
        self.sock: socket.socket | None = None
        #: Set whenever no socket is attached (close() waits on it after DISCONNECT).
        self.detached = asyncio.Event()
        self.detached.set()

    def attach(self, sock: socket.socket) -> None:
        """Register ``sock`` with the running loop and let paho (un)register writes through callbacks."""
        loop = self._loop = asyncio.get_running_loop()
        self.sock = sock
        self.detached.clear()
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        if not self._reading_paused:
            loop.add_reader(sock, self._readable)
        # CONNECT may still be partly unsent; loop_write also brings paho's "writer registered" flag in
        # line with the loop (it registers through the callbacks now installed when more is to send).
        self._client.loop_write()

    def detach(self) -> None:
        """Unregister the socket (it stays open: paho or ``close`` closes it)."""
        self._client.on_socket_close = None
        self._client.on_socket_register_write = None
        self._client.on_socket_unregister_write = None
        sock, self.sock = self.sock, None
        self.detached.set()
        self._writer_added = False
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def close(self) -> None:
        """Unregister and close the socket (a connection given up on)."""
        sock = self.sock
        self.detach()
        if sock is not None:
            sock.close()

    def pause_reading(self) -> None:
        """Stop reading from the broker (TCP backpressure) until ``resume_reading``."""
        if not self._reading_paused:
            self._reading_paused = True
            if self.sock is not None and self._loop is not None:
                self._loop.remove_reader(self.sock)

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self.sock is not None and self._loop is not None:
                self._loop.add_reader(self.sock, self._readable)
                self._loop.call_soon(self._readable)

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    # -- loop and paho callbacks (loop thread) ---------------------------------------------------------

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.detach()
        self._on_closed()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and self.sock is not None and not self._write_due:
            self._write_due = True
            self._loop.call_soon(self._write_soon)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._writer_added and self._loop is not None and self.sock is not None:
            self._writer_added = False
            self._loop.remove_writer(self.sock)

    def _write_soon(self) -> None:
        """Send what paho queued; wait for the socket to be writable only if some is left."""
        self._write_due = False
        if self.sock is None:
            return
        self._client.loop_write()
        if self.sock is not None and self._client.want_write() and not self._writer_added:
            assert self._loop is not None
            self._writer_added = True
            self._loop.add_writer(self.sock, self._writable)

    def _readable(self) -> None:
        self._client.loop_read()
        sock = self.sock
        # TLS may hold decrypted bytes the socket no longer signals: read them now.
        if sock is not None and not self._reading_paused and isinstance(sock, ssl.SSLSocket) and sock.pending():
            assert self._loop is not None
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self._client.loop_write()
