"""edged.wasm.rawstore: frame-v1 calls on raw handles behave as the public wasmtime-py path does."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime

from edged.errors import FunctionError
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm import rawstore
from edged.wasm.pool import FunctionPool
from tests.pools import call_sync
from tests.wat import BUMP_ALLOC, raw_frame, write_wasm

pytestmark = pytest.mark.timeout(60)

# edged_run's behaviour is chosen by the input's first byte (after the 32-byte header): 't' traps, 'x'
# exits with status 3, 'i' answers what _initialize set, anything else is echoed back as the JSON result.
# edged_alloc grows the memory as needed, and returns 0 when it cannot.
MODULE = """
(module
  (import "edged" "output" (func $output (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\\"init\\":1}")
  (global $inited (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $inited (i32.const 1)))
""" + BUMP_ALLOC + """  (func (export "edged_run") (param $ptr i32) (param $len i32) (result i32)
    (local $op i32)
    (local.set $op (i32.load8_u (i32.add (local.get $ptr) (i32.const 32))))
    (if (i32.eq (local.get $op) (i32.const 116)) (then unreachable))
    (if (i32.eq (local.get $op) (i32.const 120)) (then (call $exit (i32.const 3))))
    (if (i32.eq (local.get $op) (i32.const 105))
      (then (return (i32.sub (call $output (i32.const 16) (i32.mul (global.get $inited) (i32.const 10))
                                   (i32.const 1)) (i32.const 0)))))
    (drop (call $output (i32.add (local.get $ptr) (i32.const 32)) (i32.sub (local.get $len) (i32.const 32))
                (i32.const 1)))
    (i32.const 0)))
"""


@pytest.fixture(params=[True, False], ids=["raw", "public-api"])
def pool(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionPool]:
    """The same function through raw handles and through wasmtime-py's public API."""
    if request.param:
        assert rawstore.FAST, "the pinned wasmtime-py must offer what rawstore uses"
    else:
        monkeypatch.setattr(rawstore, "FAST", False)
    functions = {"fn": FunctionSettings(module=write_wasm(tmp_path, "fn", MODULE), abi="frame-v1", input="raw",
                                        memory_mb=2)}
    with FunctionPool(functions, PoolSettings(workers=1, queue=1), tmp_path / "cache") as started:
        runner = started._table.runners["fn"]  # noqa: SLF001 (which path the runner took)
        assert (getattr(runner, "_exports", None) is not None) is request.param
        yield started


def outcome(pool: FunctionPool, body: bytes) -> tuple[str, str]:
    """(code, detail) of a failed call, or ("ok", the JSON result's text)."""
    try:
        result = call_sync(pool, "fn", raw_frame(body))
    except FunctionError as exc:
        return exc.code, exc.detail
    return "ok", result.body.decode()


def test_the_input_goes_in_and_the_result_comes_out(pool: FunctionPool) -> None:
    assert outcome(pool, b'{"e": 1}') == ("ok", '{"e": 1}')
    assert outcome(pool, b'{"e": 2}') == ("ok", '{"e": 2}')


def test_a_large_input_grows_the_memory_and_arrives_whole(pool: FunctionPool) -> None:
    body = b'{"e": "' + b"x" * 300_000 + b'"}'
    assert outcome(pool, body) == ("ok", body.decode())


def test_initialize_runs_first_in_every_instance(pool: FunctionPool) -> None:
    for _ in range(3):
        assert outcome(pool, b"i") == ("ok", '{"init":1}')


def test_a_trap_is_the_call_failure_and_the_next_call_is_fresh(pool: FunctionPool) -> None:
    code, detail = outcome(pool, b"t")
    assert code == "trap"
    assert "unreachable" in detail
    assert outcome(pool, b'{"e": 3}') == ("ok", '{"e": 3}')


def test_proc_exit_is_the_run_status(pool: FunctionPool) -> None:
    assert outcome(pool, b"x") == ("function_error", "edged_run returned 3")


def test_the_memory_limit_holds(pool: FunctionPool) -> None:
    code, detail = outcome(pool, b'{"e": "' + b"x" * 3_000_000 + b'"}')  # memory_mb = 2
    assert code == "memory_limit"
    assert "edged_alloc(" in detail


# -- private names ------------------------------------------------------------------------------------------

def test_every_private_name_used_is_listed_and_checked() -> None:
    tree = ast.parse(Path(rawstore.__file__).read_text())
    imported = {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if (node.module or "").startswith("wasmtime._")}
    own = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
           and isinstance(node.value, ast.Name) and node.value.id == "self"} | {"_ffi"}
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in own}
    listed = rawstore.PRIVATE_NAMES
    for name in imported | {f".{a}" for a in attributes}:
        assert any(entry == name or entry.endswith(name) for entry in listed), name
    assert rawstore.missing() == []


_REMOVALS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "wasmtime._ffi.dll": lambda mp: mp.delattr(rawstore._ffi, "dll"),  # noqa: SLF001
    "wasmtime._func.maybe_raise_last_exn": lambda mp: mp.delattr(wasmtime._func, "maybe_raise_last_exn"),  # noqa: SLF001
    "Engine.ptr": lambda mp: mp.setattr(wasmtime.Engine, "ptr", None),
    "InstancePre.ptr": lambda mp: mp.setattr(wasmtime.InstancePre, "ptr", None),
    "WasiConfig._consume": lambda mp: mp.setattr(wasmtime.WasiConfig, "_consume", None),
    "Caller._context": lambda mp: mp.delattr(wasmtime.Caller, "_context"),
    "Trap._from_ptr": lambda mp: mp.setattr(wasmtime.Trap, "_from_ptr", None),
    # A C function the library lacks (an older or newer wasmtime).
    "wasmtime_no_such_function": lambda mp: mp.setitem(rawstore._PROTOTYPES, "wasmtime_no_such_function",  # noqa: SLF001
                                                       (None, None, ())),
}


@pytest.mark.parametrize("name", sorted(_REMOVALS))
def test_a_missing_private_name_means_the_public_api(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _REMOVALS[name](monkeypatch)
    lacking = rawstore.missing()
    assert lacking
    assert any(name in entry or entry in name for entry in lacking), lacking
