"""Name lookup and connection for ``edged.http_request``: bounded by the call's time, to chosen addresses.

The host looks a name up itself and connects to exactly the addresses it chose (after screening them,
``edged.wasm.host.addresses``), while ``Host`` and TLS (SNI, certificate name) keep the name.

Where the connection goes is set through ``HTTPConnection._create_connection``, http.client's private
hook (``PINNED_BY_HOOK`` says it is there, checked once at import). Without it the socket is connected
here and handed to http.client as ``conn.sock`` (wrapped in TLS for https), which does the same with
public names only.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

from edged.wasm.host.context import CallContext

__all__ = ["MAX_LOOKUPS", "PINNED_BY_HOOK", "AddrInfo", "open_connection", "remaining", "resolve"]

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

#: Name lookups that may be pending at once, over all calls. A lookup the resolver holds outlives its
#: call (its thread cannot be stopped), so without a bound a guest could pile up threads (TasksMax).
MAX_LOOKUPS = 8
_lookups = threading.BoundedSemaphore(MAX_LOOKUPS)
_SSL_CONTEXT: ssl.SSLContext | None = None


def _has_connection_hook() -> bool:
    """Whether http.client still connects through the per-connection ``_create_connection`` attribute."""
    connect = http.client.HTTPConnection.connect
    return ("_create_connection" in getattr(getattr(connect, "__code__", None), "co_names", ())
            and callable(getattr(http.client.HTTPConnection("localhost"), "_create_connection", None)))


PINNED_BY_HOOK = _has_connection_hook()


def ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


def remaining(ctx: CallContext) -> float:
    """Seconds left in the call; TimeoutError (an OSError, so an io_error) once there are none."""
    left = ctx.remaining()
    if left <= 0:
        raise TimeoutError("the call's time is up")
    return left


def resolve(ctx: CallContext, host: str, port: int) -> Sequence[AddrInfo]:
    """getaddrinfo within the call's remaining time; OSError when it fails, times out or cannot start.

    The resolver takes no timeout (resolv.conf's can add up to tens of seconds), so a name is looked up
    on a daemon thread: when the call's time is up the call goes on, and the thread ends whenever the
    resolver does. An IP literal needs no lookup.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not _lookups.acquire(blocking=False):
        raise OSError(f"{MAX_LOOKUPS} name lookups are already pending")
    done = threading.Event()
    outcome: list[Sequence[AddrInfo] | OSError] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            outcome.append(exc)
        except Exception as exc:  # noqa: BLE001 (e.g. UnicodeError from the idna codec: still a lookup failure)
            outcome.append(OSError(f"looking up {host} failed: {exc}"))
        finally:
            _lookups.release()
            done.set()

    try:
        threading.Thread(target=lookup, name="edged-dns", daemon=True).start()
    except RuntimeError as exc:  # no thread left (TasksMax)
        _lookups.release()
        raise OSError(f"cannot start a name lookup: {exc}") from exc
    if not done.wait(remaining(ctx)):
        raise TimeoutError(f"looking up {host} outlasted the call")
    if isinstance(outcome[0], OSError):
        raise outcome[0]
    return outcome[0]


def _connect_to(addresses: Sequence[AddrInfo]) -> Callable[..., socket.socket]:
    """socket.create_connection's signature, connecting to ``addresses`` whatever the name asked for."""
    def create_connection(_address: object, timeout: float | None = None,
                          _source_address: object = None) -> socket.socket:
        failure: OSError = OSError("the name has no address")
        for family, kind, proto, _name, sockaddr in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            return sock
        raise failure
    return create_connection


def open_connection(conn: http.client.HTTPConnection, scheme: str, host: str,
                    addresses: Sequence[AddrInfo]) -> socket.socket:
    """Connect ``conn`` to ``addresses`` (one of them) while the Host header and TLS keep ``host``."""
    connect = _connect_to(addresses)
    if PINNED_BY_HOOK:
        conn._create_connection = connect  # type: ignore[attr-defined]  # noqa: SLF001 (see the module docstring)
        conn.connect()
        sock: socket.socket = conn.sock
        return sock
    sock = connect(None, conn.timeout)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as HTTPConnection.connect does
        if scheme == "https":
            sock = ssl_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    conn.sock = sock
    return sock
