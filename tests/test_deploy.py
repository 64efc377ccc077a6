"""Deploying functions over the API, against an in-process daemon on real loopback HTTP: uploads checked by
digest and compiled, grant ceilings, config functions read-only, v1 -> v2 -> rollback -> v1, automatic
rollback after a new version's first calls all fail, the settings rule, the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import wasmtime

from edged.app import App
from edged.cli import EXIT_CONFIG, main
from edged.deploy import merge_functions
from edged.deploy.client import api_url
from edged.deploy.registry import Deployed
from edged.settings import ConfigError, FunctionSettings, load_settings
from tests.configs import daemon_config, write_config
from tests.test_http import GRAY, daemon, encoded
from tests.test_openapi import documented, registered
from tests.test_pool import m_ok, m_trap
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)


def ref(wasm: bytes) -> str:
    return "sha256:" + hashlib.sha256(wasm).hexdigest()


@asynccontextmanager
async def deploying(tmp_path: Path, **deploy: Any) -> AsyncIterator[tuple[App, aiohttp.ClientSession, str]]:
    """The in-process daemon with deploy on, and its rollback loop running as ``edged.app.run`` runs it."""
    async with daemon(tmp_path, deploy={"enabled": True, **deploy}) as parts:
        app = parts[0]
        assert app.deployer is not None
        loop = asyncio.create_task(app.deployer.run(), name="edged.deploy.rollback")
        try:
            yield parts
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop


async def upload(session: aiohttp.ClientSession, base: str, wasm: bytes,
                 digest: str | None = None) -> tuple[int, dict[str, Any]]:
    async with session.put(f"{base}/v1/modules/{digest or ref(wasm)}", data=wasm) as resp:
        return resp.status, await resp.json()


async def define(session: aiohttp.ClientSession, base: str, name: str, **spec: Any) -> tuple[int, dict[str, Any]]:
    async with session.put(f"{base}/v1/functions/{name}", json=spec) as resp:
        return resp.status, await resp.json()


async def describe(session: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/functions/{name}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def call(session: aiohttp.ClientSession, base: str, name: str) -> tuple[int, str, bytes]:
    async with session.post(f"{base}/v1/functions/{name}", data=encoded("PNG")) as resp:
        return resp.status, resp.content_type, await resp.read()


async def metric(session: aiohttp.ClientSession, base: str, line_start: str) -> float:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


def wasm_of(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


async def test_uploads_are_checked_by_digest_and_compiled(tmp_path: Path) -> None:
    gray = GRAY.read_bytes()
    async with deploying(tmp_path, max_module_bytes=len(gray) + 10) as (_app, session, base):
        status, body = await upload(session, base, gray, digest=ref(b"something else"))
        assert (status, body["error"]) == (400, "digest_mismatch")
        garbage = b"\0asm\x01\0\0\0 not really a module"
        status, body = await upload(session, base, garbage)
        assert (status, body["error"]) == (422, "bad_module")
        status, body = await upload(session, base, gray, digest="sha256:XYZ")
        assert (status, body["error"]) == (400, "bad_request")
        status, body = await upload(session, base, gray + bytes(11))
        assert (status, body["error"]) == (413, "too_large")
        store = tmp_path / "state" / "modules" / "sha256"
        assert not store.exists() or list(store.iterdir()) == []  # nothing refused was kept
        assert await upload(session, base, gray) == (201, {"module": ref(gray), "bytes": len(gray)})
        assert (await upload(session, base, gray))[0] == 200
        assert [p.name for p in store.iterdir()] == [ref(gray).removeprefix("sha256:") + ".wasm"]
        assert (store / f"{ref(gray)[7:]}.wasm").read_bytes() == gray


async def test_grants_beyond_the_ceilings_are_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    gray = GRAY.read_bytes()
    ceilings = {"max_memory_mb": 64, "max_timeout_ms": 2000, "max_output_bytes": 1 << 20,
                "preopens": [str(allowed)], "allowed_hosts": ["https://ok.example"]}
    async with deploying(tmp_path, **ceilings) as (_app, session, base):
        await upload(session, base, gray)
        module = ref(gray)
        within = {"module": module, "memory_mb": 32, "timeout_ms": 1000, "max_output_bytes": 1 << 20}
        refused = {
            "memory_mb": {"memory_mb": 65},
            "timeout_ms": {"timeout_ms": 2001},
            "max_output_bytes": {"max_output_bytes": (1 << 20) + 1},
            "preopens.0.host": {"preopens": [{"host": str(tmp_path / "other"), "guest": "/data"}]},
            "preopens.0.writable": {"preopens": [{"host": str(allowed / "sub"), "guest": "/d", "writable": True}]},
            "allowed_hosts": {"allowed_hosts": ["https://evil.example"]},
            "allow_model_bytes": {"allow_model_bytes": True},
        }
        escape = {"preopens": [{"host": f"{allowed}/../other", "guest": "/data"}]}
        for grant, spec in [*refused.items(), ("preopens.0.host", escape)]:
            status, body = await define(session, base, "f", **{**within, **spec})
            assert (status, body["error"]) == (403, "grant_refused"), (grant, body)
            assert f"functions.f.{grant}:" in body["detail"]
        async with session.get(f"{base}/v1/functions/f") as resp:
            assert resp.status == 404  # nothing refused was made
        status, body = await define(session, base, "f", module=module, memory_mb=64, timeout_ms=2000,
                                    max_output_bytes=1 << 20, allowed_hosts=["https://ok.example"],
                                    preopens=[{"host": str(allowed / "sub"), "guest": "/data"}])
        assert status == 201, body
        assert body["spec"]["preopens"][0]["host"] == str(allowed / "sub")


async def test_config_functions_are_read_only_and_specs_are_checked(tmp_path: Path) -> None:
    gray = GRAY.read_bytes()
    async with deploying(tmp_path) as (_app, session, base):
        await upload(session, base, gray)
        status, body = await define(session, base, "grayscale", module=ref(gray))
        assert (status, body["error"]) == (409, "read_only")
        async with session.delete(f"{base}/v1/functions/grayscale") as resp:
            assert (resp.status, (await resp.json())["error"]) == (409, "read_only")
        async with session.delete(f"{base}/v1/functions/nope") as resp:
            assert (resp.status, (await resp.json())["error"]) == (404, "unknown_function")
        doc = await describe(session, base, "grayscale")
        assert (doc["origin"], doc["digest"], doc["version"]) == ("config", ref(gray), None)
        status, body = await define(session, base, "f", module=ref(b"never uploaded"))
        assert (status, body["error"]) == (422, "unknown_module")
        status, body = await define(session, base, "f", module=ref(gray), memory_mb="lots")
        assert (status, body["error"]) == (422, "invalid_spec")
        assert "memory_mb" in body["detail"]
        status, body = await define(session, base, "Bad/Name", module=ref(gray))
        assert status in (404, 422)
        status, body = await define(session, base, "Bad_Name", module=ref(gray))
        assert (status, body["error"]) == (422, "invalid_spec")
        # A module that compiles but does not speak the spec's ABI: refused, nothing swapped.
        status, body = await define(session, base, "cmd", module=ref(gray), abi="wasi-command", input="raw")
        assert (status, body["error"]) == (422, "bad_module")
        async with session.get(f"{base}/v1/functions/cmd") as resp:
            assert resp.status == 404
        assert (await call(session, base, "grayscale"))[0] == 200


async def test_v1_v2_rollback_v1(tmp_path: Path) -> None:
    gray, v2 = GRAY.read_bytes(), wasm_of(m_ok())
    async with deploying(tmp_path) as (_app, session, base):
        for wasm in (gray, v2):
            assert (await upload(session, base, wasm))[0] == 201
        status, body = await define(session, base, "f", module=ref(gray), memory_mb=32)
        assert (status, body["version"], body["origin"], body["digest"]) == (201, 1, "api", ref(gray))
        assert (await call(session, base, "f"))[:2] == (200, "image/png")
        status, body = await define(session, base, "f", module=ref(gray), memory_mb=32)
        assert (status, body["version"]) == (200, 1)  # the same spec again: no new version
        status, body = await define(session, base, "f", module=ref(v2), memory_mb=32)
        assert (status, body["version"], body["previous"]) == (201, 2, 1)
        status, kind, answer = await call(session, base, "f")
        assert (status, kind, json.loads(answer)) == (200, "application/json", {"ok": 1})
        doc = await describe(session, base, "f")
        assert (doc["version"], doc["digest"]) == (2, ref(v2))
        assert [(v["version"], v["digest"]) for v in doc["versions"]] == [(1, ref(gray))]
        async with session.get(f"{base}/v1/functions") as resp:
            listed = {fn["name"]: fn for fn in (await resp.json())["functions"]}
        assert set(listed) == {"grayscale", "f"}
        async with session.post(f"{base}/v1/functions/f/rollback") as resp:
            assert resp.status == 200
            assert ((await resp.json())["version"]) == 1
        assert (await call(session, base, "f"))[:2] == (200, "image/png")
        async with session.post(f"{base}/v1/functions/f/rollback") as resp:
            assert (resp.status, (await resp.json())["error"]) == (409, "no_earlier_version")
        assert await metric(session, base, 'edged_deploy_rollbacks_total{function="f",reason="manual"}') == 1
        async with session.delete(f"{base}/v1/functions/f") as resp:
            assert resp.status == 204
        assert (await call(session, base, "f"))[0] == 404
        assert (await call(session, base, "grayscale"))[0] == 200


async def test_a_new_version_whose_first_calls_all_fail_is_rolled_back(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    gray, trap = GRAY.read_bytes(), wasm_of(m_trap())
    async with deploying(tmp_path, auto_rollback_after=3) as (_app, session, base):
        for wasm in (gray, trap):
            await upload(session, base, wasm)
        # g's first version never succeeded: its broken second version is left alone.
        await define(session, base, "g", module=ref(gray), memory_mb=32)
        await define(session, base, "g", module=ref(trap), memory_mb=32)
        await define(session, base, "f", module=ref(gray), memory_mb=32)
        assert (await call(session, base, "f"))[0] == 200
        status, body = await define(session, base, "f", module=ref(trap), memory_mb=32)
        assert (status, body["version"]) == (201, 2)
        with caplog.at_level(logging.WARNING, logger="edged.deploy"):
            for _ in range(3):
                assert (await call(session, base, "g"))[0] == 500
            for _ in range(2):
                status, _kind, answer = await call(session, base, "f")
                assert (status, json.loads(answer)["error"]) == (500, "trap")
            assert (await describe(session, base, "f"))["version"] == 2  # two failures are not three
            assert (await call(session, base, "f"))[0] == 500

            async def back_to_v1() -> bool:
                return (await describe(session, base, "f"))["version"] == 1

            await until(back_to_v1, 30, "f to be rolled back to version 1")
        assert (await call(session, base, "f"))[:2] == (200, "image/png")
        lines = [r for r in caplog.records if "rolled back" in r.getMessage()]
        assert len(lines) == 1
        assert lines[0].levelno == logging.WARNING
        assert "function f: version 2 rolled back to version 1" in lines[0].getMessage()
        assert await metric(session, base, 'edged_deploy_rollbacks_total{function="f",reason="auto"}') == 1
        assert (await describe(session, base, "g"))["version"] == 2
        assert await metric(session, base, 'edged_deploy_rollbacks_total{function="g"') == 0
        # The rolled-back version stays kept: it can be deployed again on purpose.
        assert [v["version"] for v in (await describe(session, base, "f"))["versions"]] == [2]


async def test_deploy_routes_are_served_and_documented_only_when_enabled(tmp_path: Path) -> None:
    async with deploying(tmp_path / "on") as (app, session, base):
        async with session.get(f"{base}/v1/openapi.json") as resp:
            doc = await resp.json()
        routes = registered(app)
        assert ("/v1/modules/{digest}", "PUT") in routes
        assert documented(doc) == routes
    async with daemon(tmp_path / "off") as (app, session, base):
        async with session.get(f"{base}/v1/openapi.json") as resp:
            doc = await resp.json()
        assert documented(doc) == registered(app)
        assert "/v1/modules/{digest}" not in doc["paths"]
        gray = GRAY.read_bytes()
        async with session.put(f"{base}/v1/modules/{ref(gray)}", data=gray) as resp:
            assert resp.status == 404


def test_deploy_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs http.token"):
        load_settings(deploy={"enabled": True}, http={"host": "0.0.0.0"})
    assert load_settings(deploy={"enabled": True}, http={"host": "0.0.0.0", "token": "t"}).deploy.enabled
    assert load_settings(deploy={"enabled": True}, http={"host": "::1"}).deploy.enabled
    assert not load_settings(http={"host": "0.0.0.0"}).deploy.enabled


def test_the_cli_reaches_a_wildcard_bound_api_on_loopback() -> None:
    assert api_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert api_url("::", 9000) == "http://[::1]:9000"
    assert api_url("192.168.1.7", 80) == "http://192.168.1.7:80"


def test_old_versions_past_keep_are_forgotten_but_never_the_one_a_rollback_needs() -> None:
    entry = Deployed(current=0)
    for n in range(1, 4):
        entry.add({"module": f"v{n}"}, float(n), keep=2)
    assert list(entry.versions) == [1, 2, 3]
    entry.current = 2  # rolled back to version 2
    entry.add({"module": "v4"}, 4.0, keep=1)
    assert (entry.current, entry.running.previous, list(entry.versions)) == (4, 2, [2, 4])
    entry.add({"module": "v5"}, 5.0, keep=2)
    assert (entry.running.previous, list(entry.versions)) == (4, [2, 4, 5])


def test_check_config_exits_78_for_deploy_beyond_loopback_without_a_token(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state", deploy={"enabled": True},
                                                               http={"host": "0.0.0.0"}))
    assert main(["check-config", "--config", str(path)]) == EXIT_CONFIG
    assert "needs http.token" in capsys.readouterr().err


def test_the_shadowing_warning_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    deployed = {name: FunctionSettings(module=GRAY) for name in ("shadow-a", "shadow-b", "free")}
    config_a = load_settings(functions={"shadow-a": {"module": GRAY}})
    config_ab = load_settings(functions={"shadow-a": {"module": GRAY}, "shadow-b": {"module": GRAY}})

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "shadowed by the config" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="edged.deploy"):
        for _ in range(3):  # a deploy and two reloads: one line
            assert set(merge_functions(config_a, deployed).functions) == {"shadow-a", "shadow-b", "free"}
        assert len(warnings()) == 1
        assert "shadow-a" in warnings()[0]
        merge_functions(config_ab, deployed)  # a second name joins: a line for it alone
        assert len(warnings()) == 2
        assert "shadow-b" in warnings()[1]
        assert "shadow-a" not in warnings()[1]
        merge_functions(load_settings(), deployed)  # nothing shadowed any more ...
        merge_functions(config_a, deployed)  # ... and then again: a change, said again
        assert len(warnings()) == 3
        assert merge_functions(config_a, deployed).functions["shadow-a"] == config_a.functions["shadow-a"]
