"""FunctionPool with real wasmtime and small WAT modules: results, every error class, admission, cache."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from PIL import Image

from edged.budget import MemoryBudget
from edged.errors import (
    BadImage,
    BadOutput,
    FunctionError,
    FunctionFailed,
    FunctionTimeout,
    FunctionTrap,
    MemoryLimit,
    Overloaded,
    TooManyPixels,
    UnknownFunction,
)
from edged.frames import FRAME_MAGIC, Frame
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.admission import call_bytes
from edged.wasm.engine import InstanceSlots, WasmEngine
from edged.wasm.pool import FunctionLoadError, FunctionPool
from edged.wasm.ticker import MAX_TICK_SECONDS, TICK_SECONDS, tick_for
from tests.pools import call_sync, decode_sync
from tests.waiting import until, wait_until
from tests.wat import Wat, raw_frame, write_wasm

pytestmark = pytest.mark.timeout(120)

RETURN_OK = "(i32.const 0)"


# -- modules -----------------------------------------------------------------------------------------

def m_ok() -> str:
    w = Wat()
    return w.frame_module(f"{w.json(ok='(i32.const 1)')}\n(drop (call $emit)) {RETURN_OK}")


def m_echo_raw(spin: int = 0) -> str:
    """Returns the raw input (after the 32-byte header) as the JSON result."""
    return Wat().frame_module(f"""
    (call $spin (i32.const {max(spin, 1)}))
    (call $output (i32.add (local.get $ptr) (i32.const 32)) (i32.sub (local.get $len) (i32.const 32))
                  (i32.const 1))""")


def m_echo_frame() -> str:
    """The input frame goes back as the result frame: same header layout, kind 1."""
    return Wat().frame_module("(call $output (local.get $ptr) (local.get $len) (i32.const 3))")


def m_header() -> str:
    """Reports the input header and len as JSON."""
    w = Wat()
    fields = {name: f"(i32.load offset={off} (local.get $ptr))"
              for name, off in (("magic", 0), ("kind", 4), ("width", 8), ("height", 12), ("channels", 16),
                                ("format", 20), ("length", 24))}
    return w.frame_module(f"{w.json(len='(local.get $len)', **fields)}\n(drop (call $emit)) {RETURN_OK}")


def m_trap() -> str:
    return Wat().frame_module("unreachable")


def m_endless() -> str:
    return Wat().frame_module("(loop $forever (br $forever)) (i32.const 0)")


def m_grow_until_limit() -> str:
    return Wat().frame_module(
        "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable")


def m_no_output() -> str:
    return Wat().frame_module(RETURN_OK)


def m_output(data: bytes, kind: int) -> str:
    w = Wat()
    return w.frame_module(f"(drop (call $output {w.ptr_len(data)} (i32.const {kind}))) {RETURN_OK}")


def m_output_twice() -> str:
    """Sets a result twice and logs the second errno, so the test can see it."""
    w = Wat()
    return w.frame_module(f"""
    (drop (call $output {w.ptr_len('{"first":1}')} (i32.const 1)))
    (local.set $errno (call $output {w.ptr_len('{"second":2}')} (i32.const 1)))
    {w.put("second output errno=")}
    (call $put_int (local.get $errno))
    (drop (call $log (i32.const 30) (i32.const 8192) (i32.sub (global.get $cur) (i32.const 8192))))
    {RETURN_OK}""", locals_="(local $errno i32)")


def m_fail_with_json() -> str:
    w = Wat()
    result = w.ptr_len(b'{"error":"boom"}')
    return w.frame_module(f"(drop (call $output {result} (i32.const 1))) (i32.const 7)")


def m_fail_plain() -> str:
    return Wat().frame_module("(i32.const 2)")


def m_state() -> str:
    """Counts calls in a global, in initial memory and in a page it grows: a fresh instance per call must
    always report 1 for each (instance slots are reused: their memory must come back zeroed)."""
    w = Wat()
    return w.frame_module(f"""
    (global.set $counter (i32.add (global.get $counter) (i32.const 1)))
    (i32.store8 (i32.const 700) (i32.add (i32.load8_u (i32.const 700)) (i32.const 1)))
    (local.set $grown (i32.add (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)) (i32.const 100)))
    (i32.store8 (local.get $grown) (i32.add (i32.load8_u (local.get $grown)) (i32.const 1)))
    {w.json(global_='(global.get $counter)', memory='(i32.load8_u (i32.const 700))',
            grown='(i32.load8_u (local.get $grown))', pages='(memory.size)')}
    (drop (call $emit)) {RETURN_OK}""", locals_="(local $grown i32)")


def m_command_echo() -> str:
    """A command copying stdin to stdout."""
    return Wat().command_module("""
    (i32.store (i32.const 800) (i32.const 16384))
    (i32.store (i32.const 804) (i32.const 16384))
    (drop (call $fd_read (i32.const 0) (i32.const 800) (i32.const 1) (i32.const 808)))
    (drop (call $write_fd (i32.const 1) (i32.const 16384) (i32.load (i32.const 808))))""")


def m_command_exit(status: int, stderr: str = "") -> str:
    w = Wat()
    write = f"(drop (call $write_fd (i32.const 2) {w.ptr_len(stderr)}))" if stderr else ""
    return w.command_module(f"{write} (call $proc_exit (i32.const {status}))")


def m_command_oom() -> str:
    w = Wat()
    return w.command_module(
        f"(drop (call $write_fd (i32.const 2) {w.ptr_len('memory allocation of 1048576 bytes failed')})) "
        "unreachable")


def m_command_stdout(text: str) -> str:
    w = Wat()
    return w.command_module(f"(drop (call $write_fd (i32.const 1) {w.ptr_len(text)}))")


# -- helpers -----------------------------------------------------------------------------------------

MiB = 1024 * 1024


def make_pool(tmp_path: Path, modules: dict[str, tuple[str, dict[str, Any]]], workers: int = 2, queue: int = 4,
              **kwargs: Any) -> FunctionPool:
    functions = {}
    for name, (wat, settings) in modules.items():
        path = write_wasm(tmp_path, name, wat)
        functions[name] = FunctionSettings(module=path, **settings)
    return FunctionPool(functions, PoolSettings(workers=workers, queue=queue), tmp_path / "cache", **kwargs)


def png(width: int = 4, height: int = 3, color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


FRAME = raw_frame(b"{}")

FAILING: dict[str, tuple[str, dict[str, Any]]] = {
    "trap": (m_trap(), {}),
    "endless": (m_endless(), {"timeout_ms": 50}),
    "grow": (m_grow_until_limit(), {"memory_mb": 2}),
    "alloc0": (m_echo_raw(), {"memory_mb": 1, "input": "raw"}),
    "nooutput": (m_no_output(), {}),
    "badjson": (m_output(b"not json", 1), {}),
    "notobject": (m_output(b"[1, 2]", 1), {}),
    "badmagic": (m_output(b"XXXXXXXXXXXX", 2), {}),
    "framelen": (m_output(struct.pack("<8I", FRAME_MAGIC, 1, 2, 2, 3, 0, 12, 0) + bytes(10), 3), {}),
    "badkind": (m_output(b"{}", 9), {}),
    "toolarge": (m_output(b'{"a":"0123456789"}', 1), {"max_output_bytes": 8}),
    "twice": (m_output_twice(), {}),
    "failjson": (m_fail_with_json(), {}),
    "failplain": (m_fail_plain(), {}),
    "cmdexit": (m_command_exit(3, "boom on stderr\n"), {"abi": "wasi-command", "input": "raw"}),
    "cmdoom": (m_command_oom(), {"abi": "wasi-command", "input": "raw"}),
    "cmdnotjson": (m_command_stdout("hello"), {"abi": "wasi-command", "input": "raw"}),
    "cmdempty": (m_command_stdout(""), {"abi": "wasi-command", "input": "raw"}),
    "cmdbig": (m_command_stdout('{"a":"0123456789"}'), {"abi": "wasi-command", "input": "raw",
                                                        "max_output_bytes": 8}),
}

EXPECTED: dict[str, tuple[type[FunctionError], str]] = {
    "trap": (FunctionTrap, "unreachable"),
    "endless": (FunctionTimeout, "50 ms"),
    "grow": (MemoryLimit, "2 MiB"),
    "alloc0": (MemoryLimit, "edged_alloc"),
    "nooutput": (BadOutput, "without calling edged.output"),
    "badjson": (BadOutput, "JSON"),
    "notobject": (BadOutput, "JSON object"),
    "badmagic": (BadOutput, "unknown magic"),
    "framelen": (BadOutput, "needs 12 bytes"),
    "badkind": (BadOutput, "unknown result kind 9"),
    "toolarge": (BadOutput, "max_output_bytes"),
    "twice": (BadOutput, "more than once"),
    "failjson": (FunctionFailed, '{"error":"boom"}'),
    "failplain": (FunctionFailed, "edged_run returned 2"),
    "cmdexit": (FunctionFailed, "exited with status 3: boom on stderr"),
    "cmdoom": (MemoryLimit, "memory limit"),
    "cmdnotjson": (BadOutput, "neither a JSON object"),
    "cmdempty": (BadOutput, "no output"),
    "cmdbig": (BadOutput, "max_output_bytes"),
}


@pytest.fixture(scope="module")
def failing_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionPool]:
    modules = {**FAILING, "ok": (m_ok(), {})}
    with make_pool(tmp_path_factory.mktemp("failing"), modules) as pool:
        yield pool


# -- results -----------------------------------------------------------------------------------------

def test_json_result(tmp_path: Path) -> None:
    with make_pool(tmp_path, {"ok": (m_ok(), {})}) as pool:
        result = call_sync(pool, "ok", FRAME)
    assert result.function == "ok"
    assert result.content_type == "application/json"
    assert result.json == {"ok": 1}
    assert result.body == b'{"ok":1}'
    assert result.duration_ms >= result.run_ms >= 0
    assert result.instantiate_ms > 0


def test_frame_input_header_and_frame_result(tmp_path: Path) -> None:
    modules = {"header": (m_header(), {}), "raw": (m_header(), {"input": "raw"}), "echo": (m_echo_frame(), {})}
    data = png(5, 4, (200, 100, 50))
    with make_pool(tmp_path, modules) as pool:
        frame = decode_sync(pool, data, max_pixels=100)
        header = call_sync(pool, "header", frame).json
        raw = call_sync(pool, "raw", frame).json
        echoed = call_sync(pool, "echo", frame)
    assert header == {"len": 32 + 5 * 4 * 3, "magic": FRAME_MAGIC, "kind": 1, "width": 5, "height": 4,
                      "channels": 3, "format": 2, "length": 60}
    assert raw == {"len": 32 + len(data), "magic": FRAME_MAGIC, "kind": 2, "width": 0, "height": 0,
                   "channels": 0, "format": 2, "length": len(data)}
    assert echoed.content_type == "image/png"
    assert echoed.json is None
    with Image.open(io.BytesIO(echoed.body)) as img:
        assert img.size == (5, 4)
        assert img.convert("RGB").getpixel((2, 2)) == (200, 100, 50)


def test_decode_and_call_sync_runs_on_the_callers_thread_within_the_workers_bound(tmp_path: Path) -> None:
    threads_seen: list[str] = []
    modules = {"slow": (m_endless(), {"timeout_ms": 1500}), "header": (m_header(), {})}
    with make_pool(tmp_path, modules, workers=1, queue=1,
                   on_call=lambda *_: threads_seen.append(threading.current_thread().name)) as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="waiter") as waiter, \
            ThreadPoolExecutor(1, thread_name_prefix="inline") as caller:
        assert pool.decode_and_call_sync(png(5, 4), 100, "header").json is not None
        assert threads_seen == [threading.current_thread().name]
        running = waiter.submit(call_sync, pool, "slow", FRAME)
        wait_until(lambda: pool.running == 1)
        # The one worker permit is taken: the inline call is admitted, then waits for it.
        inline = caller.submit(pool.decode_and_call_sync, png(5, 4), 100, "header")
        wait_until(lambda: pool.in_flight == 2)
        with pytest.raises(Overloaded):
            pool.decode_and_call_sync(png(5, 4), 100, "header")
        assert pool.running == 1
        assert not inline.done()
        with pytest.raises(FunctionTimeout):
            running.result(timeout=30)
        header = inline.result(timeout=30).json
        assert header is not None
        assert header["width"] == 5
        assert threads_seen[1].startswith("edged-wasm")
        assert threads_seen[2].startswith("inline")
        assert pool.in_flight == 0
        assert pool.running == 0


def test_long_timeouts_tick_coarser_and_a_runaway_guest_still_stops_at_its_deadline_not_before(
        tmp_path: Path) -> None:
    assert tick_for([50, 5000]) == TICK_SECONDS  # the shortest timeout sets it
    assert tick_for([5000]) == MAX_TICK_SECONDS
    assert tick_for([2000]) == pytest.approx(0.01)
    assert tick_for([]) == TICK_SECONDS
    timeout = 2000
    with make_pool(tmp_path, {"slow": (m_endless(), {"timeout_ms": timeout})}, workers=1) as pool:
        started = time.monotonic()
        with pytest.raises(FunctionTimeout, match=f"{timeout} ms"):
            call_sync(pool, "slow", FRAME)
        assert time.monotonic() - started >= timeout / 1000  # ticks are late under load, never early


def test_close_waits_for_a_call_on_a_callers_thread(tmp_path: Path) -> None:
    """The ticker that interrupts a runaway guest must outlive calls that run outside the workers too."""
    finished = threading.Event()
    budget = MemoryBudget(1024 * MiB)
    pool = make_pool(tmp_path, {"slow": (m_endless(), {"timeout_ms": 1500})}, workers=1, queue=0,
                     on_call=lambda *_: finished.set(), budget=budget)
    pool.start()
    guest = call_bytes(FunctionSettings(module=tmp_path / "slow.wasm", timeout_ms=1500))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            pool.decode_and_call_sync(png(), 100, "slow")
        except BaseException as exc:  # noqa: BLE001 (examined below)
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    # Past its decode (which close() would cancel) and into the guest: the call's memory is reserved.
    wait_until(lambda: budget.stats().in_use >= guest, what="the call to enter the guest")
    pool.close()
    # on_call runs on the caller's thread before the call gives back its admission: close returned after.
    assert finished.is_set()
    assert pool.in_flight == 0
    caller.join(30)
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], FunctionTimeout)


def test_decode_and_call_sync(tmp_path: Path) -> None:
    modules = {"header": (m_header(), {}), "trap": (m_trap(), {})}
    data = png(5, 4)
    with make_pool(tmp_path, modules) as pool:
        header = pool.decode_and_call_sync(data, 100, "header").json
        assert header is not None
        assert (header["width"], header["height"], header["kind"]) == (5, 4, 1)
        with pytest.raises(FunctionTrap, match="unreachable"):
            pool.decode_and_call_sync(data, 100, "trap")
        with pytest.raises(BadImage):
            pool.decode_and_call_sync(b"not an image", 100, "header")
        with pytest.raises(TooManyPixels):
            pool.decode_and_call_sync(data, 10, "header")  # 20 pixels over max_pixels
        with pytest.raises(UnknownFunction):
            pool.decode_and_call_sync(data, 100, "nope")
        assert pool.stats()["trap"]["errors"] == {"trap": 1}


def test_gif_input_gives_gif_frame_result(tmp_path: Path) -> None:
    out = io.BytesIO()
    Image.new("RGB", (3, 3), (255, 0, 0)).save(out, format="GIF")
    with make_pool(tmp_path, {"echo": (m_echo_frame(), {})}) as pool:
        result = call_sync(pool, "echo", decode_sync(pool, out.getvalue(), max_pixels=100))
    assert result.content_type == "image/gif"
    assert result.body.startswith(b"GIF8")


def test_image_result_content_type_from_magic(tmp_path: Path) -> None:
    data = png(2, 2)
    with make_pool(tmp_path, {"img": (m_output(data, 2), {})}) as pool:
        result = call_sync(pool, "img", FRAME)
    assert (result.content_type, result.body, result.json) == ("image/png", data, None)


def test_command_echoes_stdin(tmp_path: Path) -> None:
    data = png(3, 3)
    with make_pool(tmp_path, {"cat": (m_command_echo(), {"abi": "wasi-command", "input": "raw"})}) as pool:
        as_json = call_sync(pool, "cat", raw_frame(b'{"x": [1, 2]}'))
        as_image = call_sync(pool, "cat", raw_frame(data))
    assert as_json.json == {"x": [1, 2]}
    assert as_json.content_type == "application/json"
    assert (as_image.content_type, as_image.body) == ("image/png", data)


# -- failures ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAILING))
def test_failure_is_typed_and_pool_keeps_working(failing_pool: FunctionPool, name: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    error, detail = EXPECTED[name]
    frame = raw_frame(b"x" * (2 * 1024 * 1024)) if name == "alloc0" else FRAME
    with caplog.at_level(logging.WARNING, logger="edged.wasm.pool"), pytest.raises(error) as info:
        call_sync(failing_pool, name, frame)
    assert type(info.value) is error
    assert detail in info.value.detail
    warnings = [r for r in caplog.records if r.name == "edged.wasm.pool" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert name in warnings[0].getMessage()
    assert info.value.code in warnings[0].getMessage()
    # The failure was this call's only: the next one on the same pool works.
    assert call_sync(failing_pool, "ok", FRAME).json == {"ok": 1}
    assert failing_pool.stats()[name]["errors"].get(info.value.code, 0) >= 1


def test_second_output_gets_already_set(failing_pool: FunctionPool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="edged.function.twice"), pytest.raises(BadOutput):
        call_sync(failing_pool, "twice", FRAME)
    assert [r.getMessage() for r in caplog.records if r.name == "edged.function.twice"] == [
        "second output errno=3"]


def test_command_stderr_is_logged(failing_pool: FunctionPool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edged.function.cmdexit"), pytest.raises(FunctionFailed):
        call_sync(failing_pool, "cmdexit", FRAME)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edged.function.cmdexit"]
    assert lines == [(logging.INFO, "boom on stderr")]


def test_unknown_function(failing_pool: FunctionPool) -> None:
    with pytest.raises(UnknownFunction):
        call_sync(failing_pool, "nope", FRAME)


@pytest.mark.parametrize("keep_resident_mb", [0, 16])
def test_no_state_leaks_between_calls(tmp_path: Path, keep_resident_mb: int) -> None:
    # One worker: every call reuses the same instance slot of the pooling allocator.
    pool = FunctionPool({"state": FunctionSettings(module=write_wasm(tmp_path, "state", m_state()))},
                        PoolSettings(workers=1, queue=1, keep_resident_mb=keep_resident_mb), tmp_path / "cache")
    with pool:
        results = [call_sync(pool, "state", FRAME).json for _ in range(20)]
    first = results[0]
    assert first is not None
    assert first["pages"] >= 3  # the page it grew is there
    assert results == [{"global_": 1, "memory": 1, "grown": 1, "pages": first["pages"]}] * 20


def test_two_threads_get_their_own_results(tmp_path: Path) -> None:
    modules = {"echo": (m_echo_raw(spin=200_000), {"input": "raw"})}
    with make_pool(tmp_path, modules, workers=2, queue=2) as pool:

        def worker(tag: int) -> list[Any]:
            return [call_sync(pool, "echo", raw_frame(f'{{"tag": {tag}, "i": {i}}}'.encode())).json
                    for i in range(25)]

        with ThreadPoolExecutor(2) as threads:
            futures = [threads.submit(worker, tag) for tag in (1, 2)]
            results = [f.result(timeout=60) for f in futures]
    for tag, got in zip((1, 2), results, strict=True):
        assert got == [{"tag": tag, "i": i} for i in range(25)]


# -- admission ---------------------------------------------------------------------------------------

def test_overloaded_when_workers_and_queue_are_full(tmp_path: Path) -> None:
    modules = {"slow": (m_endless(), {"timeout_ms": 1500}), "ok": (m_ok(), {})}
    with make_pool(tmp_path, modules, workers=1, queue=1) as pool, ThreadPoolExecutor(2) as threads:
        running = threads.submit(call_sync, pool, "slow", FRAME)
        wait_until(lambda: pool.in_flight == 1)
        queued = threads.submit(call_sync, pool, "ok", FRAME)
        wait_until(lambda: pool.in_flight == 2)
        with pytest.raises(Overloaded):
            call_sync(pool, "ok", FRAME)
        with pytest.raises(Overloaded):
            decode_sync(pool, png(), max_pixels=100)
        assert pool.overloaded == 2
        with pytest.raises(FunctionTimeout):
            running.result(timeout=30)
        assert queued.result(timeout=30).json == {"ok": 1}
        assert pool.in_flight == 0
        assert call_sync(pool, "ok", FRAME).json == {"ok": 1}


async def test_async_calls_overload_and_cancellation(tmp_path: Path) -> None:
    modules = {"slow": (m_endless(), {"timeout_ms": 1500}), "ok": (m_ok(), {})}
    async with make_pool(tmp_path, modules, workers=1, queue=1) as pool:
        frame = await pool.decode(png(), max_pixels=100)
        assert isinstance(frame, Frame)
        assert (await pool.call("ok", frame)).json == {"ok": 1}
        slow = asyncio.create_task(pool.call("slow", frame), name="test.slow")
        await until(lambda: pool.in_flight == 1)
        waiting = asyncio.create_task(pool.call("ok", frame), name="test.waiting")
        await until(lambda: pool.in_flight == 2)
        with pytest.raises(Overloaded):
            await pool.call("ok", frame)
        # A caller that gives up while queued frees its place.
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await until(lambda: pool.in_flight == 1)
        with pytest.raises(FunctionTimeout):
            await asyncio.wait_for(slow, 30)
        assert (await pool.call("ok", frame)).json == {"ok": 1}
        assert pool.in_flight == 0


def test_calls_outside_the_context_are_refused(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"ok": (m_ok(), {})})
    with pytest.raises(Overloaded):
        call_sync(pool, "ok", FRAME)
    with pool:
        call_sync(pool, "ok", FRAME)
    with pytest.raises(Overloaded):
        call_sync(pool, "ok", FRAME)


# -- stats, hooks, describe --------------------------------------------------------------------------

def test_stats_describe_and_on_call(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    modules = {"ok": (m_ok(), {"timeout_ms": 250, "memory_mb": 8, "log": False}), "trap": (m_trap(), {})}
    pool = make_pool(tmp_path, modules, on_call=lambda fn, outcome, seconds: seen.append((fn, outcome)))
    with pool:
        for _ in range(3):
            call_sync(pool, "ok", FRAME)
        with pytest.raises(FunctionTrap):
            call_sync(pool, "trap", FRAME)
        described = {d["name"]: d for d in pool.describe()}
        stats = pool.stats()
    assert seen == [("ok", "ok")] * 3 + [("trap", "trap")]
    assert stats["ok"]["calls"] == 3
    assert stats["ok"]["errors"] == {}
    assert stats["trap"]["errors"] == {"trap": 1}
    ok = described["ok"]
    assert ok["abi"] == "frame-v1"
    assert ok["input"] == "frame"
    assert ok["limits"] == {"timeout_ms": 250, "memory_mb": 8, "max_output_bytes": 32 * 1024 * 1024}
    assert ok["grants"] == {"preopens": [], "allowed_hosts": [], "models": [], "allow_model_bytes": False,
                            "log": False}
    latency = ok["latency"]
    assert latency["count"] == 3
    assert latency["window"] == 3
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]


# -- loading and the compiled cache ------------------------------------------------------------------

def test_compiled_cache_is_reused_and_repaired(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    modules: dict[str, tuple[str, dict[str, Any]]] = {"ok": (m_ok(), {})}
    caplog.set_level(logging.INFO, logger="edged.wasm.engine")
    with make_pool(tmp_path, modules) as first:
        assert first.cache_stats is not None
        assert (first.cache_stats.compiled, first.cache_stats.hits) == (1, 0)
    cached = list((tmp_path / "cache").glob("*.cwasm"))
    assert len(cached) == 1
    assert not list((tmp_path / "cache").glob(".tmp-*"))

    with make_pool(tmp_path, modules) as second:
        assert second.cache_stats is not None
        assert (second.cache_stats.compiled, second.cache_stats.hits) == (0, 1)
        assert call_sync(second, "ok", FRAME).json == {"ok": 1}
    assert any("(cached)" in r.getMessage() for r in caplog.records)

    cached[0].write_bytes(b"\x7fELF not really a compiled module")
    caplog.clear()
    with make_pool(tmp_path, modules) as third:
        assert third.cache_stats is not None
        assert (third.cache_stats.discarded, third.cache_stats.compiled, third.cache_stats.hits) == (1, 1, 0)
        assert call_sync(third, "ok", FRAME).json == {"ok": 1}
    assert any("corrupt or incompatible" in r.getMessage() for r in caplog.records)
    assert cached[0].read_bytes() != b"\x7fELF not really a compiled module"


BAD_MODULES: dict[str, tuple[str, str, str]] = {
    "noexports": ('(module (memory (export "memory") 1))', "frame-v1", "must export edged_abi_version"),
    "nomemory": ('(module (func (export "edged_run") (param i32 i32) (result i32) (i32.const 0)))',
                 "frame-v1", "must export its memory"),
    "badsig": ('(module (memory (export "memory") 1) (func (export "edged_abi_version") (result i32) i32.const 1)'
               ' (func (export "edged_alloc") (param i32) (result i32) i32.const 0)'
               ' (func (export "edged_run") (param i32) (result i32) i32.const 0))',
               "frame-v1", "edged_run: (i32, i32) -> (i32)"),
    "version2": (Wat().frame_module(RETURN_OK, version=2), "frame-v1", "returned 2"),
    "badimport": (Wat().frame_module(RETURN_OK, imports='(import "env" "missing" (func))'), "frame-v1",
                  "cannot link"),
    "inittraps": (Wat().frame_module(RETURN_OK, exports='(func (export "_initialize") unreachable)'),
                  "frame-v1", "failed while checking"),
    "nostart": (m_ok(), "wasi-command", "must export _start"),
    # Calls trust checked signatures (edged.wasm.rawcall), _initialize included.
    "badinit": (Wat().frame_module(RETURN_OK, exports='(func (export "_initialize") (param i32))'), "frame-v1",
                "_initialize, if any, must be () -> ()"),
}


@pytest.mark.parametrize("name", sorted(BAD_MODULES))
def test_bad_module_names_the_function(tmp_path: Path, name: str) -> None:
    wat, abi, detail = BAD_MODULES[name]
    settings: dict[str, Any] = {"abi": abi, "input": "raw"}
    pool = make_pool(tmp_path, {"good": (m_ok(), {}), name: (wat, settings)})
    with pytest.raises(FunctionLoadError) as info, pool:
        pass
    assert info.value.function == name
    assert detail in str(info.value)
    assert f"functions.{name}.module" in str(info.value)


def test_missing_and_invalid_module_files(tmp_path: Path) -> None:
    settings = PoolSettings(workers=1, queue=0)
    missing = FunctionPool({"gone": FunctionSettings(module=tmp_path / "gone.wasm")}, settings, tmp_path / "c")
    with pytest.raises(FunctionLoadError, match="gone"), missing:
        pass
    (tmp_path / "junk.wasm").write_bytes(b"\0asm junk")
    junk = FunctionPool({"junk": FunctionSettings(module=tmp_path / "junk.wasm")}, settings, tmp_path / "c")
    with pytest.raises(FunctionLoadError, match="not a valid module"), junk:
        pass


# -- the instance pool -------------------------------------------------------------------------------

def test_the_pool_uses_the_pooling_allocator(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"ok": (m_ok(), {})})
    assert pool.allocator is None
    with pool:
        assert pool.allocator == "pooling"
        assert call_sync(pool, "ok", FRAME).json == {"ok": 1}


def test_instance_slots_bound_live_instances(tmp_path: Path) -> None:
    engine = WasmEngine(tmp_path, InstanceSlots(count=1, max_memory_bytes=4 * 1024 * 1024))
    assert engine.pooling
    module = wasmtime.Module(engine.engine, '(module (memory 1))')
    first = wasmtime.Store(engine.engine)
    wasmtime.Instance(first, module, [])
    with pytest.raises(wasmtime.WasmtimeError, match="maximum concurrent"):
        wasmtime.Instance(wasmtime.Store(engine.engine), module, [])
    first.close()  # frees the slot at once
    wasmtime.Instance(wasmtime.Store(engine.engine), module, [])


def test_too_many_slots_fall_back_to_the_default_allocator(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    engine = WasmEngine(tmp_path, InstanceSlots(count=1000, max_memory_bytes=4 * 1024 * 1024))
    assert not engine.pooling
    assert "address space" in caplog.text
    module = wasmtime.Module(engine.engine, '(module (memory 1))')
    stores = [wasmtime.Store(engine.engine) for _ in range(3)]
    for store in stores:
        wasmtime.Instance(store, module, [])


@pytest.mark.parametrize("abi", ["frame-v1", "wasi-command"])
def test_a_module_the_slots_cannot_hold_fails_at_load(tmp_path: Path, abi: str) -> None:
    # Two memories: a slot holds one. Caught when the module is loaded, not on every call.
    wat = m_ok() if abi == "frame-v1" else m_command_stdout("{}")
    wat = wat.replace('(memory (export "memory") 2)', '(memory (export "memory") 2) (memory $second 1)')
    pool = make_pool(tmp_path, {"twomem": (wat, {"abi": abi, "input": "raw"})})
    with pytest.raises(FunctionLoadError, match="memor"), pool:
        pass


def m_log_then_echo() -> str:
    """Logs one line (a host import the test can hold), then returns the raw input as its JSON result."""
    w = Wat()
    return w.frame_module(f"""
    (drop (call $log (i32.const 20) {w.ptr_len("holding")}))
    (call $output (i32.add (local.get $ptr) (i32.const 32)) (i32.sub (local.get $len) (i32.const 32))
                  (i32.const 1))""")


class _Hold(logging.Handler):
    """Blocks the thread that logs until ``release``: a call stays inside its host import, slot held."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.holding = threading.Event()
        self.release = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.holding.set()
        self.release.wait(30)


def test_running_out_of_instance_slots_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # By construction a worker always finds a slot; force one slot for two workers to see the failure mode.
    real = FunctionPool._slots
    monkeypatch.setattr(FunctionPool, "_slots", lambda self: dataclasses.replace(real(self), count=1))
    hold = _Hold()
    logger = logging.getLogger("edged.function.held")
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(hold)
    modules = {"held": (m_log_then_echo(), {"input": "raw", "timeout_ms": 60_000})}
    try:
        with make_pool(tmp_path, modules, workers=2, queue=2) as pool, ThreadPoolExecutor(2) as ex:
            first = ex.submit(call_sync, pool, "held", raw_frame(b'{"n":1}'))
            # The first call is inside edged.log, its instance holding the one slot, until released.
            assert hold.holding.wait(30)
            second = ex.submit(call_sync, pool, "held", raw_frame(b'{"n":2}'))
            with pytest.raises(FunctionFailed, match="no free instance slot"):
                second.result(timeout=30)
            hold.release.set()
            assert first.result(timeout=30).json == {"n": 1}
    finally:
        hold.release.set()
        logger.removeHandler(hold)
