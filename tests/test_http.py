"""The HTTP API over real loopback HTTP against an in-process daemon (App): results, every error class,
overload, auth, listings, metrics; the daemon keeps serving after each failure."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from edged.app import App
from edged.settings import FunctionSettings, Settings
from tests.assets import CHELSEA as PHOTO
from tests.assets import GRAYSCALE_WASM as GRAY
from tests.configs import daemon_config
from tests.test_pool import m_endless, m_grow_until_limit, m_no_output, m_ok, m_trap
from tests.waiting import until
from tests.wat import write_wasm

pytestmark = pytest.mark.timeout(120)



def encoded(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    img = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


@asynccontextmanager
async def daemon(tmp_path: Path, functions: dict[str, FunctionSettings] | None = None,
                 **overrides: Any) -> AsyncIterator[tuple[App, aiohttp.ClientSession, str]]:
    fns = {"grayscale": FunctionSettings(module=GRAY)} if functions is None else functions
    settings = Settings(**daemon_config(tmp_path / "state", functions=fns, **overrides))
    async with App(settings) as app, aiohttp.ClientSession() as session:
        yield app, session, f"http://127.0.0.1:{app.http_port}"


async def post(session: aiohttp.ClientSession, url: str, data: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    async with session.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def still_serves(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}/healthz") as resp:
        assert resp.status == 200
    status, body, headers = await post(session, f"{base}/v1/functions/grayscale", encoded("PNG"))
    assert status == 200, body
    assert headers["Content-Type"] == "image/png"


async def test_grayscale_png_luma_identical_to_pillow(tmp_path: Path) -> None:
    photo = PHOTO.read_bytes()
    async with daemon(tmp_path) as (_app, session, base):
        status, body, headers = await post(session, f"{base}/v1/functions/grayscale", photo)
        assert status == 200, body
        assert headers["Content-Type"] == "image/png"
        assert "X-Edged-Duration-Ms" in headers
        legacy_status, legacy, _ = await post(session, f"{base}/api/image", photo, {"api": "rs"})
        assert legacy_status == 200
        assert legacy == body
        gif_status, gif, gif_headers = await post(session, f"{base}/v1/functions/grayscale", encoded("GIF"))
        assert gif_status == 200
        assert gif_headers["Content-Type"] == "image/gif"
    with Image.open(io.BytesIO(body)) as out, Image.open(PHOTO) as src:
        assert out.format == "PNG"
        assert out.mode == "L"
        assert out.size == src.size
        assert out.tobytes() == src.convert("L").tobytes()
    with Image.open(io.BytesIO(gif)) as out:
        assert out.format == "GIF"
        assert out.size == (64, 48)


def _truncated_jpeg() -> bytes:
    data = PHOTO.read_bytes()
    return data[: len(data) // 2]


BAD_INPUTS: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "not an image": (lambda: b"hello, not an image", 400, "bad_image"),
    "empty": (lambda: b"", 400, "bad_image"),
    "truncated jpeg": (_truncated_jpeg, 400, "bad_image"),
    "tiff": (lambda: encoded("TIFF"), 415, "unsupported_format"),
    "over max_pixels": (lambda: encoded("PNG", (1200, 1000), "L"), 422, "too_many_pixels"),
    "over max_body_bytes": (lambda: bytes(300_000), 413, "too_large"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_input_gets_json_error(tmp_path: Path, case: str) -> None:
    make, status, code = BAD_INPUTS[case]
    async with daemon(tmp_path, http={"max_pixels": 1_000_000, "max_body_bytes": 200_000}) as (app, session, base):
        got, body, headers = await post(session, f"{base}/v1/functions/grayscale", make())
        assert got == status, body
        assert headers["Content-Type"].startswith("application/json")
        payload = json.loads(body)
        assert set(payload) == {"error", "detail"}
        assert payload["error"] == code
        assert payload["detail"]
        async with session.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        assert f'edged_rejected_inputs_total{{code="{code}",source="http"}} 1.0' in metrics
        await still_serves(session, base)


FAILING = {
    "trap": (m_trap, {}, 500, "trap"),
    "endless": (m_endless, {"timeout_ms": 200}, 504, "timeout"),
    "greedy": (m_grow_until_limit, {"memory_mb": 4}, 500, "memory_limit"),
    "silent": (m_no_output, {}, 500, "bad_output"),
}


async def test_function_failures_fail_that_call_only(tmp_path: Path) -> None:
    fns = {"grayscale": FunctionSettings(module=GRAY)}
    for name, (build, limits, _status, _code) in FAILING.items():
        fns[name] = FunctionSettings(module=write_wasm(tmp_path, name, build()), **limits)
    async with daemon(tmp_path, fns) as (_app, session, base):
        for name, (_build, _limits, status, code) in FAILING.items():
            got, body, _ = await post(session, f"{base}/v1/functions/{name}", encoded("PNG"))
            assert got == status, (name, body)
            assert json.loads(body)["error"] == code
            await still_serves(session, base)
        got, body, _ = await post(session, f"{base}/v1/functions/nope", encoded("PNG"))
        assert got == 404
        assert json.loads(body)["error"] == "unknown_function"
        async with session.get(f"{base}/v1/functions") as resp:
            listing = {f["name"]: f for f in (await resp.json())["functions"]}
        for name, (_b, _l, _s, code) in FAILING.items():
            assert listing[name]["calls"] == 1
            assert listing[name]["errors"] == {code: 1}
        assert listing["grayscale"]["calls"] == len(FAILING)  # one still_serves() call after each failure
        assert listing["endless"]["limits"]["timeout_ms"] == 200
        async with session.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        assert 'edged_function_calls_total{function="greedy",outcome="memory_limit"} 1.0' in metrics


async def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    fns = {"grayscale": FunctionSettings(module=GRAY),
           "slow": FunctionSettings(module=write_wasm(tmp_path, "slow", m_endless()), timeout_ms=3000)}
    async with daemon(tmp_path, fns, pool={"workers": 1, "queue": 0}) as (app, session, base):
        first = asyncio.create_task(post(session, f"{base}/v1/functions/slow", encoded("PNG")))
        await until(lambda: app.pool.in_flight >= 1, 10, "the slow call to be admitted")
        assert app.pool.in_flight == 1
        status, body, headers = await post(session, f"{base}/v1/functions/grayscale", encoded("PNG"))
        assert status == 503, body
        assert json.loads(body)["error"] == "overloaded"
        assert int(headers["Retry-After"]) >= 1
        slow_status, _, _ = await first
        assert slow_status == 504
        await still_serves(session, base)


async def test_bearer_token(tmp_path: Path) -> None:
    async with daemon(tmp_path, http={"token": "s3cret"}) as (_app, session, base):
        for path in ("/healthz", "/readyz"):
            async with session.get(base + path) as resp:
                assert resp.status == 200
        async with session.get(f"{base}/v1/functions") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
        status, _, _ = await post(session, f"{base}/v1/functions/grayscale", encoded("PNG"),
                                  {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, _ = await post(session, f"{base}/v1/functions/grayscale", encoded("PNG"),
                                  {"Authorization": "Bearer s3cret"})
        assert status == 200


async def test_legacy_route_needs_api_header(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (_app, session, base):
        status, body, _ = await post(session, f"{base}/api/image", encoded("PNG"))
        assert status == 400
        assert json.loads(body)["error"] == "bad_request"
        status, body, _ = await post(session, f"{base}/api/image", encoded("PNG"), {"api": "go"})
        assert status == 404  # classify is not configured in this daemon
        status, _, _ = await post(session, f"{base}/api/image", encoded("PNG"), {"api": "grayscale"})
        assert status == 200


async def test_json_function_and_readyz(tmp_path: Path) -> None:
    fns = {"grayscale": FunctionSettings(module=GRAY),
           "ok": FunctionSettings(module=write_wasm(tmp_path, "ok", m_ok()))}
    async with daemon(tmp_path, fns) as (_app, session, base):
        status, body, headers = await post(session, f"{base}/v1/functions/ok", encoded("JPEG"))
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {"ok": 1}
        async with session.get(f"{base}/readyz") as resp:
            ready = await resp.json()
        assert resp.status == 200
        assert ready["ready"] is True
        assert ready["components"]["mqtt"]["state"] == "disabled"
        assert ready["components"]["dapr"]["state"] == "disabled"
