"""The HTTP client of ``edged deploy`` and ``edged rollback``: the daemon's deploy API through urllib.

``deploy`` uploads the module by its digest (PUT /v1/modules/sha256:HEX), then makes it the function's new
version (PUT /v1/functions/NAME); the daemon does every check. A refusal is an ApiError carrying the
daemon's error code and detail.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["ApiError", "api_url", "deploy", "rollback"]

TIMEOUT_SECONDS = 120.0  # a first upload compiles the module before it answers


class ApiError(Exception):
    """The daemon refused (``code``, ``detail`` from its error body) or could not be reached."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def api_url(host: str, port: int) -> str:
    """The base URL of an API bound to ``host``: a wildcard address is reached on loopback."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 (mapped away, not bound)
    host = wildcard.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _call(method: str, url: str, token: str | None, body: bytes | None = None,
          content_type: str | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith(("http://", "https://")):
        raise ApiError("bad_url", f"{url}: the API is an http:// or https:// URL")
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            error = json.loads(raw)
            raise ApiError(str(error["error"]), f"{error['detail']} ({method} {url}: {exc.code})") from exc
        except (ValueError, KeyError, TypeError):
            raise ApiError("http_error", f"{method} {url}: {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ApiError("unreachable", f"cannot reach {url}: {reason}") from exc
    answer: dict[str, Any] = json.loads(raw) if raw else {}
    return answer


def deploy(base: str, token: str | None, name: str, wasm: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """Upload ``wasm`` and make ``spec`` (its ``module`` set to the digest) ``name``'s new version."""
    ref = "sha256:" + hashlib.sha256(wasm).hexdigest()
    _call("PUT", f"{base}/v1/modules/{ref}", token, wasm, "application/wasm")
    body = json.dumps({**spec, "module": ref}).encode()
    return _call("PUT", f"{base}/v1/functions/{name}", token, body, "application/json")


def rollback(base: str, token: str | None, name: str) -> dict[str, Any]:
    """Put back the version ``name``'s current one replaced."""
    return _call("POST", f"{base}/v1/functions/{name}/rollback", token)
