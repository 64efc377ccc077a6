"""GET /v1/openapi.json against an in-process daemon: the document is OpenAPI 3.1, documents every route
the aiohttp router holds (and nothing else), gives every error the one error shape, and lists every code
of edged.errors at its status."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edged.app import App
from edged.ingest.http import LEGACY_API_NAMES
from edged.ingest.openapi import OPENAPI_PATH, error_codes, openapi_document
from tests.test_http import daemon, encoded

pytestmark = pytest.mark.timeout(120)

OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR_REF = "#/components/schemas/Error"


def registered(app: App) -> set[tuple[str, str]]:
    """(path, METHOD) of every route in the app's router; HEAD, which aiohttp adds beside each GET, apart."""
    found: set[tuple[str, str]] = set()
    for resource in app.http.application().router.resources():
        found.update((resource.canonical, route.method) for route in resource)
    heads = {(path, method) for path, method in found if method == "HEAD"}
    assert heads
    assert all((path, "GET") in found for path, _ in heads)  # HEAD answers as the GET: documented once
    return found - heads


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item if method in OPERATIONS}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` followed."""
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in OPERATIONS]


async def test_the_document_matches_the_router_both_ways(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (app, session, base):
        async with session.get(base + OPENAPI_PATH) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            doc = await resp.json()
        routes = registered(app)
        assert ("/v1/functions/{name}", "POST") in routes
        assert (OPENAPI_PATH, "GET") in routes
        assert documented(doc) == routes
        assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
        for path, method, op in operations(doc):
            placeholders = set(re.findall(r"\{(\w+)\}", path))
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == placeholders, (path, method)
            assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
        # Real answers have the documented fields.
        schemas = doc["components"]["schemas"]
        for path, schema in (("/readyz", "Ready"), ("/v1/outbox", "Outbox"), ("/healthz", "Health")):
            async with session.get(base + path) as resp:
                body = await resp.json()
            assert set(schemas[schema]["required"]) <= set(body) <= set(schemas[schema]["properties"]), path
        async with session.post(f"{base}/v1/functions/nope", data=encoded("PNG")) as resp:
            assert resp.status == 404
            assert set(await resp.json()) == set(schemas["Error"]["properties"])


def test_every_error_answer_is_the_one_shape_and_every_code_is_listed() -> None:
    doc = openapi_document(outbox=True, legacy=tuple(LEGACY_API_NAMES.items()))
    checked = 0
    for path, method, op in operations(doc):
        assert "default" in op["responses"], (path, method)
        for status, answer in op["responses"].items():
            if status != "default" and int(status) < 400:
                continue
            schema = resolve(doc, answer)["content"]["application/json"]["schema"]
            refs = [schema] + schema.get("oneOf", [])
            assert any(ref.get("$ref") == ERROR_REF for ref in refs), (path, method, status)
            checked += 1
        if path not in ("/healthz", "/readyz", "/", "/static/{name}"):  # the probes and the dashboard
            assert "unauthorized" in op["responses"]["401"]["description"], (path, method)
        else:
            assert op["security"] == []
    assert checked > 20
    # Each code of edged.errors, at each of its statuses, on the routes that run functions.
    call = doc["paths"]["/v1/functions/{name}"]["post"]
    legacy = doc["paths"]["/api/image"]["post"]
    codes = error_codes()
    assert {"bad_image", "too_large", "overloaded", "timeout", "unknown_function"} <= set(codes)
    for code, statuses in codes.items():
        for status in statuses:
            for op in (call, legacy):
                assert re.search(rf"\b{code}\b", op["responses"][str(status)]["description"]), (code, status)
        assert code in doc["components"]["schemas"]["Error"]["properties"]["error"]["examples"]
    assert "Retry-After" in call["responses"]["503"]["headers"]
    body = call["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp", "application/octet-stream"} == set(body)
    assert [p["name"] for p in legacy["parameters"]] == ["api", "X-Camera"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    without = openapi_document(outbox=False)
    assert set(doc["paths"]) - set(without["paths"]) == {"/v1/outbox", "/v1/outbox/dead/retry"}


async def test_the_document_needs_the_token_when_one_is_set(tmp_path: Path) -> None:
    async with daemon(tmp_path, http={"token": "s3cret"}) as (_app, session, base):
        async with session.get(base + OPENAPI_PATH) as resp:
            assert resp.status == 401
        async with session.get(base + OPENAPI_PATH, headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["paths"]
