"""The outbound-HTTP URL policy: what an origin is, for ``allowed_hosts`` and for ``edged.http_request``.

Settings validate ``allowed_hosts`` with it, so it imports only the standard library (``import
edged.settings`` must not pull in wasmtime; the package ``__init__``s above it import nothing).
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["normalize_origin"]


def normalize_origin(url: str) -> str:
    """Return ``scheme://host:port`` with the default port made explicit; raise ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: credentials are not allowed in an origin")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port") from exc
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"
