"""edged.wasm.rawcall: export lookup and unchecked i32 calls, against the public wasmtime-py API."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from edged.settings import FunctionSettings
from edged.wasm import rawcall
from edged.wasm.command import CommandRunner
from edged.wasm.scratch import Scratch, make_scratch_root, remove_scratch_root
from tests.wat import raw_frame

pytestmark = pytest.mark.timeout(60)

MODULE = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $g (export "counter") (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "neg") (param i32) (result i32) (i32.sub (i32.const 0) (local.get 0)))
  (func (export "bump") (global.set $g (i32.add (global.get $g) (i32.const 1))))
  (func (export "get") (result i32) (global.get $g))
  (func (export "trap") (param i32) (result i32) unreachable)
  (func (export "exit") (param i32) (result i32) (call $exit (local.get 0)) (i32.const 0)))
"""


@pytest.fixture(params=[True, False], ids=["fast", "public-api"])
def instance(request: pytest.FixtureRequest,
             monkeypatch: pytest.MonkeyPatch) -> tuple[wasmtime.Store, wasmtime.Instance]:
    """The same module through the fast path and through the public-API fallback."""
    if request.param:
        assert rawcall.FAST, "the pinned wasmtime-py must offer the internals rawcall uses"
    else:
        monkeypatch.setattr(rawcall, "FAST", False)
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    return store, linker.instantiate(store, wasmtime.Module(engine, MODULE))


def func(store: wasmtime.Store, inst: wasmtime.Instance, name: str) -> wasmtime.Func:
    found = rawcall.export(store, inst, name)
    assert isinstance(found, wasmtime.Func)
    return found


def test_exports_by_name(instance: tuple[wasmtime.Store, wasmtime.Instance]) -> None:
    store, inst = instance
    memory = rawcall.export(store, inst, "memory")
    assert isinstance(memory, wasmtime.Memory)
    assert memory.data_len(store) == 65536
    assert isinstance(rawcall.export(store, inst, "counter"), wasmtime.Global)
    assert rawcall.export(store, inst, "missing") is None


def test_arguments_results_and_state(instance: tuple[wasmtime.Store, wasmtime.Instance]) -> None:
    store, inst = instance
    add, neg = func(store, inst, "add"), func(store, inst, "neg")
    assert rawcall.call_i32(store, add, 40, 2) == 42
    assert rawcall.call_i32(store, add, 0x7FFF_FFFF, 1) == -(1 << 31)  # i32 wraps
    assert rawcall.call_i32(store, neg, 0xFFFF_FFFF) == 1  # a u32 argument is taken modulo 2**32
    bump, get = func(store, inst, "bump"), func(store, inst, "get")
    assert rawcall.call_i32(store, bump, results=0) is None
    assert rawcall.call_i32(store, bump, results=0) is None
    assert rawcall.call_i32(store, get) == 2
    with pytest.raises(ValueError, match="zero or one"):
        rawcall.call_i32(store, get, results=2)


def test_traps_and_exit_surface_as_in_the_public_api(instance: tuple[wasmtime.Store, wasmtime.Instance]) -> None:
    store, inst = instance
    with pytest.raises(wasmtime.Trap) as trapped:
        rawcall.call_i32(store, func(store, inst, "trap"), 1)
    assert trapped.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    with pytest.raises(wasmtime.ExitTrap) as exited:
        rawcall.call_i32(store, func(store, inst, "exit"), 7)
    assert exited.value.code == 7
    # The store is still usable after both.
    assert rawcall.call_i32(store, func(store, inst, "add"), 1, 2) == 3


def test_a_runner_must_be_validated_before_it_calls(tmp_path: Path) -> None:
    path = tmp_path / "m.wasm"
    path.write_bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
    engine = wasmtime.Engine()
    runner = CommandRunner("m", FunctionSettings(module=path, abi="wasi-command", input="raw"),
                            wasmtime.Module.from_file(engine, str(path)), engine, 5.0, None)
    root = make_scratch_root()
    try:
        with pytest.raises(RuntimeError, match="not validated"):
            runner.call(raw_frame(b""), Scratch(root))
    finally:
        remove_scratch_root(root)


# -- the private names: all listed, all checked ------------------------------------------------------

def _private_names_in_source() -> set[str]:
    """Private attributes and modules rawcall.py reaches for (ctypes' own ``_fields_`` aside)."""
    tree = ast.parse(Path(rawcall.__file__).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("_"):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wasmtime"):
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if "._" in f"{node.module}.{alias.name}")
    return found


def test_every_private_name_used_is_listed_and_checked() -> None:
    listed = rawcall.PRIVATE_NAMES
    for name in _private_names_in_source():
        assert any(entry == name or entry.endswith(f".{name}") for entry in listed), name
    assert rawcall.missing() == []


def _without_attribute(cls: type, attribute: str) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        def from_raw(_cls: type, _raw: object) -> object:
            return object.__new__(cls)  # made without the private attribute a renamed wasmtime-py would lack

        monkeypatch.setattr(cls, "_from_raw", classmethod(from_raw))
    return patch


_REMOVALS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "Store._context": lambda mp: mp.delattr(wasmtime.Store, "_context"),
    "WasmtimeError._from_ptr": lambda mp: mp.delattr(wasmtime.WasmtimeError, "_from_ptr"),
    "Func._from_raw": lambda mp: mp.delattr(wasmtime.Func, "_from_raw"),
    "Memory._from_raw": lambda mp: mp.delattr(wasmtime.Memory, "_from_raw"),
    "Func._func": _without_attribute(wasmtime.Func, "_func"),
    "Instance._instance": _without_attribute(wasmtime.Instance, "_instance"),
    "wasmtime._ffi": lambda mp: mp.setattr(rawcall, "_ffi", None),
    "wasmtime._ffi.wasmtime_func_call_unchecked": lambda mp: mp.delattr(rawcall._ffi, "wasmtime_func_call_unchecked"),
    "wasmtime._ffi.wasmtime_linker_define_func_unchecked":
        lambda mp: mp.delattr(rawcall._ffi, "wasmtime_linker_define_func_unchecked"),
    "Caller._invalidate": lambda mp: mp.delattr(wasmtime.Caller, "_invalidate"),
    "Trap._consume": lambda mp: mp.setattr(wasmtime.Trap, "_consume", None),  # inherited: hide it
}


@pytest.mark.parametrize("name", sorted(_REMOVALS))
def test_a_missing_private_name_means_the_public_api(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _REMOVALS[name](monkeypatch)
    lacking = rawcall.missing()
    assert lacking
    assert any(name in entry or entry in name for entry in lacking), lacking


# -- host imports defined by define_i32 --------------------------------------------------------------------

HOST_MODULE = """
(module
  (import "h" "f" (func $f (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "edged")
  (func (export "call") (param i32 i32 i32) (result i32)
    (call $f (local.get 0) (local.get 1) (local.get 2))))
"""


@pytest.fixture(params=[True, False], ids=["fast", "public-api"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if not request.param:
        monkeypatch.setattr(rawcall, "FAST", False)
    return bool(request.param)


def _host_instance(host: rawcall.HostI32) -> tuple[wasmtime.Store, wasmtime.Func]:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    rawcall.define_i32(linker, "h", "f", 3, host)
    store = wasmtime.Store(engine)
    inst = linker.instantiate(store, wasmtime.Module(engine, HOST_MODULE))
    return store, func(store, inst, "call")


def test_a_host_import_gets_its_arguments_the_caller_and_returns_its_result(fast: bool) -> None:
    seen: list[tuple[int, int, int, bytes]] = []

    def host(caller: wasmtime.Caller, a: int, b: int, c: int) -> int:
        memory = caller.get("memory")
        assert isinstance(memory, wasmtime.Memory)
        seen.append((a, b, c, bytes(memory.read(caller, a, a + b))))
        return a + b + c

    store, call = _host_instance(host)
    assert rawcall.call_i32(store, call, 8, 5, -1) == 12
    assert rawcall.call_i32(store, call, 0x7FFF_FFFF, 1, 0) == -(1 << 31)  # the result wraps as an i32
    assert seen[0] == (8, 5, -1, b"edged")  # arguments arrive as signed i32, as from define_func
    assert seen[1][:3] == (0x7FFF_FFFF, 1, 0)


def test_a_host_import_that_raises_traps_its_own_call() -> None:
    def host(caller: wasmtime.Caller, a: int, b: int, c: int) -> int:
        return a // b

    store, call = _host_instance(host)
    # A trap made by the host comes back as an error (the runner reports it as a trap), as in wasmtime-py.
    with pytest.raises(wasmtime.WasmtimeError, match="host import raised ZeroDivisionError"):
        rawcall.call_i32(store, call, 1, 0, 0)
    assert rawcall.call_i32(store, call, 6, 3, 0) == 2  # the store is still usable


def test_a_host_import_is_forgotten_with_the_last_linker_or_instance_using_it() -> None:
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, HOST_MODULE)
    before = set(rawcall._HOSTS)
    linker = wasmtime.Linker(engine)
    rawcall.define_i32(linker, "h", "f", 3, lambda caller, a, b, c: a)
    (added,) = set(rawcall._HOSTS) - before
    pre = linker.instantiate_pre(module)
    del linker
    assert added in rawcall._HOSTS  # the InstancePre still uses it
    store = wasmtime.Store(engine)
    assert rawcall.call_i32(store, func(store, pre.instantiate(store), "call"), 4, 0, 0) == 4
    store.close()
    del pre
    assert added not in rawcall._HOSTS
