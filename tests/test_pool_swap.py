"""The pool's function table swapped while calls run, the ticker parked while idle, and scratch files
that come back after someone removes them."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edged.errors import FunctionTimeout, UnknownFunction
from edged.settings import FunctionSettings
from edged.wasm.pool import FunctionLoadError
from tests.pools import call_sync
from tests.test_pool import FRAME, m_command_echo, m_endless, m_ok, make_pool, png
from tests.waiting import wait_until
from tests.wat import raw_frame, write_wasm

pytestmark = pytest.mark.timeout(60)


def test_swap_keeps_calls_in_flight_on_the_old_table_and_releases_it_after(tmp_path: Path) -> None:
    with make_pool(tmp_path, {"slow": (m_endless(), {"timeout_ms": 400}), "ok": (m_ok(), {})}) as pool:
        released = threading.Event()
        with ThreadPoolExecutor(1) as caller:
            slow = caller.submit(call_sync, pool, "slow", FRAME)
            wait_until(lambda: pool.running == 1, 10, "the slow call to run")
            new = {"fresh": FunctionSettings(module=write_wasm(tmp_path, "fresh", m_ok()))}
            pool.swap(new, pool.extension, released.set)
            assert not released.is_set()  # the slow call still holds the old table
            assert call_sync(pool, "fresh", FRAME).json == {"ok": 1}
            with pytest.raises(UnknownFunction):
                call_sync(pool, "ok", FRAME)
            assert not pool.has("slow")
            assert pool.has("fresh")
            with pytest.raises(FunctionTimeout):  # it ran to its end on the runner it started with
                slow.result(timeout=20)
        wait_until(released.is_set, 10, "the old table to be released after its last call")
        assert [f["name"] for f in pool.describe()] == ["fresh"]


def test_swap_refuses_an_unusable_module_and_keeps_the_table(tmp_path: Path) -> None:
    with make_pool(tmp_path, {"ok": (m_ok(), {})}) as pool:
        garbage = tmp_path / "garbage.wasm"
        garbage.write_bytes(b"\0asm garbage")
        with pytest.raises(FunctionLoadError):
            pool.swap({"bad": FunctionSettings(module=garbage)}, pool.extension)
        assert call_sync(pool, "ok", FRAME).json == {"ok": 1}


def test_ticker_parks_when_idle_and_still_times_calls_out(tmp_path: Path) -> None:
    with make_pool(tmp_path, {"endless": (m_endless(), {"timeout_ms": 50})}) as pool:
        wait_until(lambda: pool.ticker_parked, 10, "the ticker to park with nothing running")
        with pytest.raises(FunctionTimeout):
            call_sync(pool, "endless", FRAME)
        wait_until(lambda: pool.ticker_parked, 10, "the ticker to park again after the call")


def test_scratch_root_removed_between_two_calls_is_made_again(tmp_path: Path) -> None:
    cmd = {"abi": "wasi-command", "input": "raw"}
    with make_pool(tmp_path, {"echo": (m_command_echo(), cmd)}, workers=1) as pool:
        data = png()
        assert call_sync(pool, "echo", raw_frame(data)).body == data
        root = pool.scratch_root
        assert root is not None
        assert root.is_dir()
        shutil.rmtree(root)
        assert call_sync(pool, "echo", raw_frame(data)).body == data
        assert pool.scratch_root is not None
        assert pool.scratch_root.is_dir()
