"""The outbound-HTTP URL policy: what an origin is, for ``allowed_hosts`` and for ``edged.http_request``.

Settings validate ``allowed_hosts`` with it, so it imports only the standard library (``import
edged.settings`` must not pull in wasmtime; the package ``__init__``s above it import nothing).

A URL is refused with ValueError (never another exception) unless it is printable ASCII (a guest
percent-encodes anything else, and writes an international name as its ``xn--`` form), at most
``MAX_URL`` characters, ``http`` or ``https``, without credentials, with a port 1-65535, and with a host
that is an IPv4 address, a bracketed IPv6 address without a zone, or a DNS name (labels of 1-63
letters, digits, ``-`` or ``_``; 253 characters at most). Anything past these would otherwise fail
later, inside the resolver or http.client, with exceptions that are not errnos.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["MAX_URL", "Url", "normalize_origin", "split_url"]

#: Longest URL accepted (request line limits of common servers are 8 KiB).
MAX_URL = 8192
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class Url:
    scheme: str
    #: Lower case; an IPv6 address without brackets.
    host: str
    port: int
    #: ``scheme://host:port`` with the default port made explicit.
    origin: str
    #: Path and query, as sent in the request line.
    target: str


def _host(url: str, hostname: str | None) -> str:
    if not hostname:
        raise ValueError(f"{url!r}: no host")
    host = hostname.lower()
    if ":" in host or "%" in host:
        try:
            if "%" in host:
                raise ValueError("a zone id names a local interface")
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"{url!r}: bad IPv6 address") from exc
        return host
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise ValueError(f"{url!r}: bad IPv4 address") from exc
        return host
    if len(host) > _MAX_NAME or not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"{url!r}: bad host name")
    return host


def split_url(url: str) -> Url:
    """The parts of an absolute http(s) URL; ValueError for anything the module docstring refuses."""
    if len(url) > MAX_URL:
        raise ValueError(f"URL of {len(url)} characters is over {MAX_URL}")
    if not _PRINTABLE.match(url):
        raise ValueError(f"{url[:80]!r}: a URL must be printable ASCII (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: scheme must be http or https")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r}: credentials are not allowed in an origin")
    if port == 0:
        raise ValueError(f"{url!r}: bad port")
    port = port or (443 if parts.scheme == "https" else 80)
    host = _host(url, parts.hostname)
    shown = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Url(parts.scheme, host, port, f"{parts.scheme}://{shown}:{port}", target)


def normalize_origin(url: str) -> str:
    """Return ``scheme://host:port`` with the default port made explicit; raise ValueError otherwise."""
    return split_url(url).origin
