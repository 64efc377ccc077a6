"""The module store's bound: unreferenced modules go after a version is pruned or a function deleted, only
past deploy.module_grace; an upload over deploy.max_modules_bytes removes the oldest of them first, else
is refused with 507 store_full. Real files under a tmp state_dir, a Deployer on a recording target, and
an injected clock for the grace period."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edged.deploy import Deployer
from edged.errors import ModuleStoreFull
from edged.settings import FunctionSettings, Settings, load_settings
from tests.test_deploy import define, deploying, metric, ref, upload, wasm_of
from tests.test_http import GRAY
from tests.test_pool import m_ok

pytestmark = pytest.mark.timeout(120)

SIZE = 1000


class Target:
    """The daemon as the deployer sees it: every module compiles, every swap is recorded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.applied: list[set[str]] = []

    def compile_module(self, wasm: bytes, label: str) -> None:
        assert wasm

    async def apply_deployed(self, functions: Mapping[str, FunctionSettings]) -> None:
        self.applied.append(set(functions))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def blob(tag: str) -> bytes:
    """A distinct "module" of SIZE bytes (the recording target compiles anything)."""
    return tag.encode().ljust(SIZE, b"\0")


def hexof(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def deployer(tmp_path: Path, clock: Clock, functions: dict[str, Any] | None = None,
             **deploy: Any) -> tuple[Deployer, CollectorRegistry]:
    settings = load_settings(state_dir=tmp_path / "state", deploy={"enabled": True, **deploy},
                             functions=functions or {})
    metrics = CollectorRegistry()
    return Deployer(Target(settings), metrics, clock=clock), metrics


async def put(d: Deployer, wasm: bytes) -> bool:
    return await d.upload(ref(wasm), wasm, hexof(wasm))


def stored(d: Deployer) -> set[bytes]:
    return {d.modules.path(m.hexdigest).read_bytes() for m in d.modules.stored()}


def removed(metrics: CollectorRegistry, reason: str) -> float:
    return metrics.get_sample_value("edged_deploy_modules_removed_total", {"reason": reason}) or 0.0


async def test_a_pruned_versions_module_goes_only_after_its_grace_period(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    d, metrics = deployer(tmp_path, clock, keep_versions=1, module_grace=100)
    a, b, c, e = blob("a"), blob("b"), blob("c"), blob("e")
    for wasm in (a, b, c):
        assert await put(d, wasm)
    for wasm in (a, b, c):
        await d.define("f", {"module": ref(wasm)})
    # Version 1 (a) was pruned at once, but a is younger than the grace period: kept.
    assert [v["version"] for v in d.document("f")["versions"]] == [2]
    assert stored(d) == {a, b, c}
    clock.now += 101
    assert await put(d, e)
    with caplog.at_level(logging.INFO, logger="edged.deploy"):
        await d.define("f", {"module": ref(e)})  # prunes version 2 (b)
    assert stored(d) == {c, e}  # a and b: unreferenced and past their grace; c is what a rollback needs
    assert removed(metrics, "unreferenced") == 2
    lines = [r.getMessage() for r in caplog.records if "module store: removed" in r.getMessage()]
    assert len(lines) == 1
    assert "2 module(s) (unreferenced)" in lines[0]
    assert ref(a) in lines[0]
    assert ref(b) in lines[0]


async def test_delete_removes_what_only_that_function_used_and_an_upload_renews_the_grace(tmp_path: Path) -> None:
    clock = Clock()
    d, metrics = deployer(tmp_path, clock, module_grace=50)
    a, b, spare = blob("a"), blob("b"), blob("spare")
    for wasm in (a, b, spare):
        await put(d, wasm)
    await d.define("f", {"module": ref(a)})
    await d.define("g", {"module": ref(a)})
    await d.define("g", {"module": ref(b)})
    clock.now += 40
    assert not await put(d, spare)  # known: 200, and its grace period starts again
    clock.now += 20
    await d.delete("g")
    # b was only g's; a is still f's; spare was uploaded again 20 s ago.
    assert stored(d) == {a, spare}
    assert removed(metrics, "unreferenced") == 1
    clock.now += 31
    await d.delete("f")
    assert stored(d) == set()
    assert removed(metrics, "unreferenced") == 3


async def test_an_upload_over_the_cap_removes_the_oldest_unreferenced_first_else_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    d, metrics = deployer(tmp_path, clock, max_modules_bytes=3 * SIZE, module_grace=10)
    a, b, c, x, y, z = (blob(t) for t in ("a", "b", "c", "x", "y", "z"))
    for wasm in (a, b, c):  # exactly at the cap
        await put(d, wasm)
        clock.now += 1
    await d.define("f", {"module": ref(c)})
    clock.now += 20
    assert await put(d, x)
    assert stored(d) == {b, c, x}  # a, the oldest unreferenced, made the room; b was not needed
    assert removed(metrics, "space") == 1
    await d.define("f", {"module": ref(x)})  # c stays: it is the version a rollback goes back to
    assert stored(d) == {c, x}  # b, unreferenced and past its grace, went with the change
    assert removed(metrics, "unreferenced") == 1
    assert await put(d, y)
    assert stored(d) == {c, x, y}
    # c and x are referenced, y is within its grace period: nothing can go.
    with pytest.raises(ModuleStoreFull, match=r"over deploy.max_modules_bytes = 3000") as refused:
        await put(d, z)
    assert (refused.value.code, refused.value.http_status) == ("store_full", 507)
    assert stored(d) == {c, x, y}
    assert removed(metrics, "space") == 1
    assert not await put(d, y)  # a known module needs no room
    with pytest.raises(ModuleStoreFull):
        await put(d, blob("big").ljust(3 * SIZE + 1, b"\0"))


async def test_a_config_function_naming_a_stored_module_keeps_it(tmp_path: Path) -> None:
    a, b = blob("a"), blob("b")
    pinned = tmp_path / "state" / "modules" / "sha256" / f"{hexof(a)}.wasm"
    d, _ = deployer(tmp_path, Clock(), module_grace=0, functions={"pinned": {"module": pinned}})
    await put(d, a)
    await put(d, b)
    await d.define("f", {"module": ref(b)})
    await d.delete("f")
    assert stored(d) == {a}


async def test_a_full_store_answers_507_store_full_over_http(tmp_path: Path) -> None:
    gray, other = GRAY.read_bytes(), wasm_of(m_ok())
    async with deploying(tmp_path, max_modules_bytes=len(gray) + len(other) - 1, module_grace=0) as (
            _app, session, base):
        assert (await upload(session, base, gray))[0] == 201
        assert (await define(session, base, "f", module=ref(gray), memory_mb=32))[0] == 201
        status, body = await upload(session, base, other)
        assert (status, body["error"]) == (507, "store_full")
        assert "deploy.max_modules_bytes" in body["detail"]
        async with session.get(f"{base}/v1/openapi.json") as resp:
            doc = await resp.json()
        answer = doc["paths"]["/v1/modules/{digest}"]["put"]["responses"]["507"]
        assert "store_full" in answer["description"]
        async with session.delete(f"{base}/v1/functions/f") as resp:
            assert resp.status == 204
        assert (await upload(session, base, other))[0] == 201  # gray went with f
        assert await metric(session, base, 'edged_deploy_modules_removed_total{reason="unreferenced"}') == 1
