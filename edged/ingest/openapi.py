"""The OpenAPI 3.1 document of the HTTP API (``GET /v1/openapi.json``), a plain dict built once.

Error codes and their statuses are computed from edged.errors, the input media types from the formats
edged decodes; tests/test_openapi.py checks the documented paths and methods against the aiohttp router,
both ways. The document is the same on every device (no function names, no settings), so it is served
behind the bearer token like every other route but the probes: a client that can call the API has it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, get_args

from aiohttp import web

import edged.errors as errors
from edged.frames import FORMAT_CODES
from edged.ingest.routes import MAX_CAMERA_CHARS
from edged.status import State

__all__ = ["OPENAPI_PATH", "error_codes", "openapi_document", "openapi_route"]

OPENAPI_PATH = "/v1/openapi.json"
_ERROR = {"$ref": "#/components/schemas/Error"}
#: Codes the HTTP layer itself answers with, besides edged.errors: the token check and aiohttp's router.
_HTTP_CODES = {"unauthorized": 401, "not_found": 404, "method_not_allowed": 405}
#: What a function's result can be: a JSON object, or an image edged encodes or sniffs (PNG, GIF, JPEG).
_RESULT_TYPES = ("image/png", "image/gif", "image/jpeg")
_INPUT_TYPES = tuple(f"image/{fmt.lower()}" for fmt in FORMAT_CODES) + ("application/octet-stream",)
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_codes() -> dict[str, set[int]]:
    """Every error code edged raises (edged.errors) and the HTTP statuses it comes with."""
    codes: dict[str, set[int]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.EdgedError):
            codes.setdefault(cls.code, set()).add(cls.http_status)
    return codes


def _error_response(codes: list[str], headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": "the one error shape; error is one of: " + ", ".join(sorted(codes)),
                              "content": {"application/json": {"schema": _ERROR}}}
    if headers:
        answer["headers"] = dict(headers)
    return answer


def _errors_by_status(statuses: set[int] | None = None) -> dict[str, Any]:
    """An error response per status (all of edged.errors' when ``statuses`` is None), plus 401 and default."""
    by_status: dict[int, list[str]] = {}
    for code, codes_statuses in error_codes().items():
        for status in codes_statuses:
            if statuses is None or status in statuses:
                by_status.setdefault(status, []).append(code)
    by_status.setdefault(401, []).append("unauthorized")
    answers = {str(status): _error_response(codes, _RETRY_AFTER if status == 503 else None)
               for status, codes in sorted(by_status.items())}
    answers["default"] = {"$ref": "#/components/responses/Error"}
    return answers


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": sorted(props)}


def _call(summary: str, headers: list[dict[str, Any]], path_name: bool) -> dict[str, Any]:
    params = list(headers)
    if path_name:
        params.insert(0, {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                          "description": "a function of the daemon's [functions] (GET /v1/functions)"})
    result_headers = {h: {"schema": {"type": "string"}, "description": d} for h, d in (
        ("X-Edged-Function", "the function that ran"),
        ("X-Edged-Duration-Ms", "the function's own run time"),
        ("X-Edged-Total-Ms", "the whole call, decode and commit included"),
        ("X-Edged-Event-Id", "the stored result's event id"))}
    content = {"application/json": {"schema": {"type": "object", "description": "the function's JSON result"}}}
    content.update({t: {"schema": {"type": "string", "contentMediaType": t}} for t in _RESULT_TYPES})
    return {
        "summary": summary,
        "parameters": params,
        "requestBody": {"required": True, "description": "the image, as bytes (gzip or deflate Content-Encoding "
                        "taken)", "content": {t: {"schema": {"type": "string", "contentMediaType": t}}
                                              for t in _INPUT_TYPES}},
        "responses": {"200": {"description": "the function's result: a JSON object or an image",
                              "headers": result_headers, "content": content},
                      **_errors_by_status()},
    }


def _get(summary: str, ok: dict[str, Any], *, open_path: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors_by_status({500})}}
    if open_path:
        operation["security"] = []
        del operation["responses"]["401"]
    return operation


_CAMERA = {"name": "X-Camera", "in": "header", "required": False, "description":
           f"the camera id (default http): 1-{MAX_CAMERA_CHARS} printable ASCII characters, none of / + #",
           "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CAMERA_CHARS, "default": "http"}}


def _schemas() -> dict[str, Any]:
    num, count, text = {"type": ["number", "null"]}, {"type": "integer"}, {"type": ["string", "null"]}
    component = _obj(state={"enum": list(get_args(State))}, detail={"type": "string"}, since={"type": "number"})
    dead = _obj(id={"type": "string"}, camera={"type": "string"}, function={"type": "string"},
                reason={"type": "string"}, attempts=count, created_at={"type": "number"})
    codes = sorted(set(error_codes()) | set(_HTTP_CODES))
    return {
        "Error": {**_obj(error={"type": "string", "examples": codes,
                                "description": "a stable code: " + ", ".join(codes)},
                         detail={"type": "string", "description": "what went wrong, for a human"}),
                  "additionalProperties": False},
        "Health": _obj(status={"const": "ok"}),
        "Ready": {"type": "object", "required": ["ready", "device_id", "components"], "properties": {
            "ready": {"type": "boolean"}, "device_id": {"type": "string"},
            "components": {"type": "object", "additionalProperties": component},
            "reason": {"enum": ["shutting_down", "outbox_full"], "description": "why not ready (only then)"}}},
        "Functions": _obj(functions={"type": "array", "items": {"type": "object", "description":
                          "name, abi, input, module, limits, grants, calls, errors and latency"}}),
        "Outbox": _obj(depth=count, bytes=count, store_bytes=count, max_bytes=count, max_age_s={"type": "number"},
                       on_full={"type": "string"}, oldest_age_s=num, dead=count,
                       dead_letters={"type": "array", "items": dead}, evicted_total=count,
                       evicted={"type": "object", "additionalProperties": count}, last_sync_at=num,
                       last_error=text, last_error_at=num, results=count, disk_bytes=count,
                       bytes_per_result={"type": ["integer", "null"]}, results_per_s={"type": "number"},
                       hours_left=num, quarantined=count),
        "Requeued": _obj(requeued=count),
        "Deployed": _deployed_schema(),
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- deploy (edged.deploy, edged/ingest/deploy.py): served with [deploy] enabled = true -------------------
#: The statuses a deploy route answers with (besides 401 and the default).
_DEPLOY_STATUSES = {400, 403, 404, 408, 409, 413, 415, 422, 500, 503, 507}
_NAME = {"name": "name", "in": "path", "required": True, "description": "the function's name",
         "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"}}
_DIGEST = {"name": "digest", "in": "path", "required": True, "description": "sha256:<64 lowercase hex digits>",
           "schema": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}}
_SPEC = {"type": "object", "required": ["module"], "additionalProperties": False, "description":
         "a [functions.NAME] table of the config as JSON, module being the digest of an uploaded module; "
         "grants within [deploy]'s ceilings (else 403 grant_refused)",
         "properties": {"module": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                        "abi": {"enum": ["frame-v1", "wasi-command"]}, "input": {"enum": ["frame", "raw"]},
                        "timeout_ms": {"type": "integer"}, "memory_mb": {"type": "integer"},
                        "max_output_bytes": {"type": "integer"}, "preopens": {"type": "array"},
                        "allowed_hosts": {"type": "array", "items": {"type": "string"}},
                        "private_hosts": {"type": "array", "items": {"type": "string"}},
                        "models": {"type": "array", "items": {"type": "string"}},
                        "allow_model_bytes": {"type": "boolean"}, "log": {"type": "boolean"}}}


def _deploy_op(summary: str, answers: dict[str, Any], params: list[dict[str, Any]],
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": params,
                                 "responses": {**answers, **_errors_by_status(_DEPLOY_STATUSES)}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _deploy_paths() -> dict[str, Any]:
    doc = _json(_ref("Deployed"), "the function: origin, version, digest, spec and earlier versions")
    module = _json(_obj(module={"type": "string"}, bytes={"type": "integer"}), "the module")
    spec = {"application/json": {"schema": _SPEC}}
    wasm = {"application/wasm": {"schema": {"type": "string", "contentMediaType": "application/wasm"}}}
    return {
        "/v1/modules/{digest}": {"put": _deploy_op(
            "upload a module by its digest (400 digest_mismatch, 422 bad_module, 507 store_full)",
            {"201": {**module, "description": "stored and compiled"}, "200": {**module, "description": "known"}},
            [_DIGEST], wasm)},
        "/v1/functions/{name}": {
            "get": _deploy_op("a function: spec, version, digest, origin, earlier versions", {"200": doc}, [_NAME]),
            "put": _deploy_op("a new version of an API function, swapped in like a reload (409 for a config "
                              "function)", {"201": {**doc, "description": "a new version"},
                                            "200": {**doc, "description": "the same as the current one"}},
                              [_NAME], spec),
            "delete": _deploy_op("remove an API function", {"204": {"description": "removed"}}, [_NAME]),
        },
        "/v1/functions/{name}/rollback": {"post": _deploy_op(
            "put back the version the current one replaced (409 no_earlier_version)", {"200": doc}, [_NAME])},
    }


def _deployed_schema() -> dict[str, Any]:
    earlier = _obj(version={"type": "integer"}, digest={"type": "string"}, created_at={"type": "number"},
                   succeeded={"type": "boolean"})
    return {"type": "object", "required": ["name", "origin", "version", "digest", "spec", "versions"],
            "properties": {"name": {"type": "string"}, "origin": {"enum": ["config", "api"]},
                           "version": {"type": ["integer", "null"]}, "digest": {"type": ["string", "null"]},
                           "spec": {"type": "object"}, "created_at": {"type": "number"},
                           "previous": {"type": ["integer", "null"]}, "succeeded": {"type": "boolean"},
                           "versions": {"type": "array", "items": earlier}}}
# -- end of deploy --------------------------------------------------------------------------------------


# -- event history and live stream (issue 13 section 2; the routes are edged/ingest/events_api.py) -------
def _event_paths() -> dict[str, Any]:
    text = {"type": "string"}
    event = {"type": "object", "description": "the stored event body (id, device_id, camera, function, kind, "
             "source, latency_ms, result, image, error) plus created_at and image_url",
             "required": ["id", "camera", "function", "kind", "created_at", "image_url"],
             "properties": {"id": text, "camera": text, "function": text, "kind": {"enum": ["result", "error"]},
                            "created_at": {"type": "string", "format": "date-time"},
                            "image_url": {"type": ["string", "null"]}}}
    filters = [{"name": n, "in": "query", "required": False, "schema": s, "description": d} for n, s, d in (
        ("camera", text, "only this camera"), ("function", text, "only this function"),
        ("kind", {"enum": ["result", "error"]}, "only results, or only errors"))]
    bound = "a cursor (next of a page), an event id, or an RFC 3339 time"
    listing = [*filters, *({"name": n, "in": "query", "required": False, "schema": text, "description": d}
                           for n, d in (("since", f"events after this: {bound}"),
                                        ("before", f"events before this: {bound}")))]
    listing.append({"name": "limit", "in": "query", "required": False, "description": "events per page",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}})
    one_id = {"name": "id", "in": "path", "required": True, "schema": text, "description": "an event id"}
    page = _obj(events={"type": "array", "items": event}, next={"type": ["string", "null"], "description":
                "pass as before= for the next, older page; null at the end (a page may be short and still "
                "have a next when a function/kind filter looked at its bounded number of events)"})
    return {
        "/v1/events": {"get": {**_get("stored events, newest first", _json(page, "a page")),
                               "parameters": listing}},
        "/v1/events/stream": {"get": {
            **_get("committed events as Server-Sent Events (id:, event: kind, data: the event as one JSON line); "
                   "a ': keep-alive' comment at least every 15 s",
                   {"description": "text/event-stream", "content": {"text/event-stream": {"schema": text}}}),
            "parameters": [*filters,
                           {"name": "Last-Event-ID", "in": "header", "required": False, "schema": text,
                            "description": "resume after this event: what was committed since comes first"},
                           {"name": "last_event_id", "in": "query", "required": False, "schema": text,
                            "description": "the same, for clients that cannot set the header"}]}},
        "/v1/events/{id}": {"get": {**_get("one event", _json(event, "the event")), "parameters": [one_id]}},
        "/v1/events/{id}/image": {"get": {
            **_get("the event's stored result image", {"description": "the image, in its content type",
                                                     "content": {"image/*": {"schema": {"type": "string"}}}}),
            "parameters": [one_id]}},
    }


def _with_lookups(paths: dict[str, Any]) -> dict[str, Any]:
    """Every event route answers 400 for a bad parameter and 404 for an unknown event; the stream 503 too."""
    for path, item in paths.items():
        answers = item["get"]["responses"]
        answers["400"] = _error_response(["bad_request"])
        if "{id}" in path:
            answers["404"] = _error_response(["not_found"])
        if path.endswith("/stream"):
            answers["503"] = _error_response(["overloaded"], _RETRY_AFTER)
    return paths
# -- end of event history -------------------------------------------------------------------------------


def openapi_document(*, outbox: bool = True, legacy: tuple[tuple[str, str], ...] = (),
                     deploy: bool = False, events: bool = True) -> dict[str, Any]:
    """The document; ``outbox`` says whether the outbox routes are served, ``legacy`` maps POST /api/image's
    ``api`` values to function names, ``deploy`` whether the deploy routes are served, ``events`` whether the
    event history and stream are."""
    names = ", ".join(f"{k} = {v}" for k, v in legacy)
    api = {"name": "api", "in": "header", "required": True, "schema": {"type": "string", "minLength": 1},
           "description": f"the function to run: a function name, or the old demo's values ({names})"}
    paths: dict[str, Any] = {
        "/healthz": {"get": _get("alive", _json(_ref("Health"), "the process serves"), open_path=True)},
        "/readyz": {"get": _get("ready for work", _json(_ref("Ready"), "ready, with every component's state"),
                                open_path=True)},
        "/metrics": {"get": _get("Prometheus metrics", {"description": "Prometheus text exposition",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}})},
        "/v1/functions": {"get": _get("every function with its limits, grants and stats",
                                      _json(_ref("Functions"), "the functions"))},
        "/v1/functions/{name}": {"post": _call("run one function on an image", [_CAMERA], path_name=True)},
        "/api/image": {"post": _call("the original demo's route: the function named by the api header",
                                     [api, _CAMERA], path_name=False)},
        OPENAPI_PATH: {"get": _get("this document", _json({"type": "object"}, "OpenAPI 3.1"))},
    }
    # Not ready is 503 with the Ready document (an error shape only from the connection limit).
    not_ready = _json({"oneOf": [_ref("Ready"), _ERROR]}, "not ready: reason says why")
    paths["/readyz"]["get"]["responses"]["503"] = not_ready
    if outbox:
        paths["/v1/outbox"] = {"get": _get("the outbox: depth, bounds, dead letters, last sync",
                                           _json(_ref("Outbox"), "the outbox"))}
        paths["/v1/outbox/dead/retry"] = {"post": _get("queue every dead letter again",
                                                       _json(_ref("Requeued"), "how many were queued"))}
    if deploy:
        for path, item in _deploy_paths().items():
            paths.setdefault(path, {}).update(item)
    if events:  # event history and live stream
        paths.update(_with_lookups(_event_paths()))
    # -- dashboard (issue 13 §1): the page and its static files, open like the probes (edged.ingest.web).
    page = {"description": "the dashboard", "content": {"text/html": {"schema": {"type": "string"}}}}
    paths["/"] = {"get": _get("the dashboard page (no token: the page asks for it)", page, open_path=True)}
    static = _get("a script, style sheet or image of the dashboard", {"description": "the file, with an ETag",
                  "content": {t: {"schema": {"type": "string"}} for t in ("text/javascript", "text/css")}},
                  open_path=True)
    static["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                             "description": "a file of edged/web/"}]
    static["responses"]["304"] = {"description": "not modified (If-None-Match matched the ETag)"}
    static["responses"]["404"] = _error_response(["not_found"])
    paths["/static/{name}"] = {"get": static}
    # -- end dashboard
    return {
        "openapi": "3.1.0",
        "info": {"title": "edged", "version": "1",
                 "description": "The local HTTP API of edged. Every error is {\"error\": code, \"detail\": text}."},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "http.token / http.token_file, when set"}},
            "schemas": _schemas(),
            "responses": {"Error": _error_response(sorted(_HTTP_CODES) + ["overloaded"])},
        },
    }


def openapi_route(*, outbox: bool, legacy: Mapping[str, str],
                  deploy: bool = False, events: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler answering the document, serialized once."""
    body = json.dumps(openapi_document(outbox=outbox, legacy=tuple(sorted(legacy.items())), deploy=deploy,
                                       events=events)).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handler
