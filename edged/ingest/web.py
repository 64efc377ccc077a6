"""The dashboard's static files (edged/web/), served at ``/`` and ``/static/{name}``.

The files are read once through importlib.resources when the app is built, so an installed wheel serves
the copy it was packaged with. They are open (no bearer token): the page holds no data, and every API call
it makes sends the token itself. Each answer carries an ETag and ``Cache-Control: no-cache`` (revalidate,
then 304), and a Content-Security-Policy that allows nothing but this origin: no inline script, no CDN.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass

from aiohttp import web

__all__ = ["DASHBOARD_PATH", "STATIC_PREFIX", "StaticFile", "add_dashboard", "is_open_path", "load_files"]

DASHBOARD_PATH = "/"
STATIC_PREFIX = "/static/"
_INDEX = "index.html"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
          ".svg": "image/svg+xml"}
# blob: for the result images and thumbnails the page fetches with the token and shows as object URLs.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the dashboard, as served."""

    body: bytes
    content_type: str
    etag: str


def load_files(package: str = "edged", folder: str = "web") -> dict[str, StaticFile]:
    """Every file of the package's ``folder`` whose type is known, by name."""
    files: dict[str, StaticFile] = {}
    for entry in importlib.resources.files(package).joinpath(folder).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files[entry.name] = StaticFile(body, _TYPES[suffix], etag)
    if _INDEX not in files:
        raise RuntimeError(f"the dashboard's {_INDEX} is not packaged in {package}/{folder}")
    return files


def is_open_path(path: str) -> bool:
    """Whether the bearer token is not asked for ``path``: the page and its static files."""
    return path == DASHBOARD_PATH or path.startswith(STATIC_PREFIX)


def _answer(request: web.Request, item: StaticFile) -> web.Response:
    headers = {**_HEADERS, "ETag": item.etag}
    if item.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if item.content_type.startswith("text/") else None
    return web.Response(body=item.body, content_type=item.content_type, charset=charset, headers=headers)


def add_dashboard(router: web.UrlDispatcher) -> None:
    """Add ``GET /`` (the page) and ``GET /static/{name}`` (its scripts and style) to ``router``."""
    files = load_files()

    async def index(request: web.Request) -> web.Response:
        return _answer(request, files[_INDEX])

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        item = files.get(name)
        if item is None:
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        return _answer(request, item)

    router.add_get(DASHBOARD_PATH, index)
    router.add_get(STATIC_PREFIX + "{name}", static)
