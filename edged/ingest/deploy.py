"""The deploy routes of the HTTP API (served with ``[deploy] enabled = true``): modules by digest, function
versions, rollback and delete. The work is edged.deploy's; these read bodies within bounds and answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from aiohttp import web

from edged.errors import InvalidSpec
from edged.ingest.body import body_bound, read_body
from edged.settings import Settings

if TYPE_CHECKING:  # the deploy service is imported only where deploy is enabled (edged.app)
    from edged.deploy import Deployer

__all__ = ["MAX_SPEC_BYTES", "add_deploy_routes"]

#: A function spec is a few hundred bytes; this is room for many preopens and hosts, and no more.
MAX_SPEC_BYTES = 64 * 1024


class _Routes:
    def __init__(self, deployer: Deployer, settings: Settings,
                 reserve_body: Callable[[int], AbstractContextManager[object]]) -> None:
        self._deployer = deployer
        self._settings = settings
        self._reserve_body = reserve_body

    async def put_module(self, request: web.Request) -> web.Response:
        limit = self._settings.deploy.max_module_bytes
        digest = hashlib.sha256()
        with self._reserve_body(body_bound(request, limit)):
            wasm = await read_body(request, limit=limit, idle_timeout=self._settings.http.body_idle_timeout,
                                   on_chunk=digest.update)
            ref = request.match_info["digest"]
            new = await self._deployer.upload(ref, wasm, digest.hexdigest())
        return web.json_response({"module": ref, "bytes": len(wasm)}, status=201 if new else 200)

    async def get_function(self, request: web.Request) -> web.Response:
        return web.json_response(await self._deployer.describe(request.match_info["name"]))

    async def put_function(self, request: web.Request) -> web.Response:
        http = self._settings.http
        raw = await read_body(request, limit=MAX_SPEC_BYTES, idle_timeout=http.body_idle_timeout)
        try:
            spec = json.loads(raw)
        except ValueError as exc:
            raise InvalidSpec(f"the spec is not JSON: {exc}") from exc
        document, new = await self._deployer.define(request.match_info["name"], spec)
        return web.json_response(document, status=201 if new else 200)

    async def rollback(self, request: web.Request) -> web.Response:
        return web.json_response(await self._deployer.rollback(request.match_info["name"]))

    async def delete_function(self, request: web.Request) -> web.Response:
        await self._deployer.delete(request.match_info["name"])
        return web.Response(status=204)


def add_deploy_routes(app: web.Application, deployer: Deployer, settings: Settings,
                      reserve_body: Callable[[int], AbstractContextManager[object]]) -> None:
    """Add the deploy routes to ``app``; module bodies are held against ``reserve_body`` while read."""
    routes = _Routes(deployer, settings, reserve_body)
    app.router.add_put("/v1/modules/{digest}", routes.put_module)
    app.router.add_get("/v1/functions/{name}", routes.get_function)
    app.router.add_put("/v1/functions/{name}", routes.put_function)
    app.router.add_delete("/v1/functions/{name}", routes.delete_function)
    app.router.add_post("/v1/functions/{name}/rollback", routes.rollback)
