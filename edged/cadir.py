"""Start-up without parsing the whole CA bundle twice: aiohttp's client TLS contexts, built at import.

aiohttp builds two client ``SSLContext`` objects when it is imported, and each loads OpenSSL's default
CA bundle file: with OpenSSL 3 that parses every certificate, ~20-40 ms each on a quiet x86_64 core and
far more on a small board, all before the daemon can be ready, for a client (the Dapr sidecar) that may
never speak TLS. ``ca_directory_lookup()`` hides the bundle file for the length of that import, so
those two contexts find the same CAs through the hashed CA directory (``/etc/ssl/certs`` on Debian)
instead, which OpenSSL reads one certificate at a time when a handshake asks for it.

It does so only when that directory holds hashed certificates (``update-ca-certificates`` makes them)
and the operator set neither ``SSL_CERT_FILE`` nor ``SSL_CERT_DIR``; otherwise nothing changes.
Contexts made after the import (MQTT's TLS, the guests' outbound HTTPS) read the bundle as before.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ca_directory_lookup", "hashed_ca_directory"]

_FILE_ENV = "SSL_CERT_FILE"
_DIR_ENV = "SSL_CERT_DIR"


def hashed_ca_directory() -> Path | None:
    """OpenSSL's default CA directory when it holds hashed certificates (``<hash>.0`` links), else None."""
    capath = ssl.get_default_verify_paths().openssl_capath
    try:
        with os.scandir(capath) as entries:
            if any(entry.name.endswith(".0") for entry in entries):
                return Path(capath)
    except OSError:
        pass
    return None


@contextmanager
def ca_directory_lookup() -> Iterator[bool]:
    """While inside, OpenSSL's default verify paths are the CA directory only; yields whether it applied."""
    if _FILE_ENV in os.environ or _DIR_ENV in os.environ or hashed_ca_directory() is None:
        yield False
        return
    # An empty file: OpenSSL loads no certificate from it and keeps the directory lookup.
    os.environ[_FILE_ENV] = os.devnull
    try:
        yield True
    finally:
        del os.environ[_FILE_ENV]
