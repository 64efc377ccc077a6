"""Export lookup, calls of i32 functions and i32 host imports without wasmtime-py's per-call conversion.

``Instance.exports(store)`` builds a map of every export, and ``Func.__call__`` asks the function's type
and converts every argument through new ``ValType`` objects: together about 60 % of a no-op call's time
(measured, bench/pool_bench.py). A call through edged needs three exports and two or three calls whose
signatures were checked when the module was loaded (``FunctionRunner.validate``), so this module looks
exports up by name (``wasmtime_instance_export_get``) and calls them through
``wasmtime_func_call_unchecked``, both from the C API bindings that wasmtime-py itself ships.

Host imports go the other way: wasmtime-py's ``Linker.define_func`` trampoline makes a ``Caller``, a ``Val``
per argument and converts the result back through the function's type on every call (measured: about
four times the cost of the import itself). ``define_i32`` defines an import whose parameters and result
are all i32 through ``wasmtime_linker_define_func_unchecked``, reading and writing the raw values.

Those bindings are wasmtime-py internals, so pyproject pins ``wasmtime>=50,<51``; every private name used
here is listed in ``PRIVATE_NAMES`` and checked once at import (``missing``), and everything falls back to
the public API when any one is missing (``FAST`` says which is in use). Traps and errors surface
exactly as from the public API: ``wasmtime.Trap``, ``wasmtime.ExitTrap`` or ``wasmtime.WasmtimeError``.

Only call ``call_i32`` on a function whose signature is known to be ``(i32 * len(args)) -> (i32 * results)``
with ``results`` at most 1: the unchecked call trusts it.
"""

from __future__ import annotations

import ctypes
import itertools
import operator
from collections.abc import Callable
from typing import Any

import wasmtime

__all__ = ["FAST", "FFI", "PRIVATE_NAMES", "HostI32", "call_i32", "define_i32", "export", "missing"]

try:
    from wasmtime import _ffi as _ffi_module
    from wasmtime._extern import wrap_extern as _wrap_extern_fn
    from wasmtime._func import enter_wasm as _enter_wasm_fn

    #: wasmtime-py's own ctypes bindings of the C API (``wasmtime._ffi``), or None; engine.py uses them too.
    FFI: Any = _ffi_module
    _wrap_extern: Any = _wrap_extern_fn
    _enter_wasm: Any = _enter_wasm_fn
except ImportError:  # pragma: no cover - a wasmtime-py without these internals
    FFI = None

_ffi: Any = FFI

#: Every private name of wasmtime-py the fast path touches (tests/test_rawcall.py keeps this complete).
PRIVATE_NAMES = frozenset({
    "wasmtime._ffi", "wasmtime._ffi.dll", "wasmtime._extern.wrap_extern", "wasmtime._func.enter_wasm",
    "Store._context", "Instance._instance", "Func._func", "Func._from_raw", "Memory._from_raw",
    "WasmtimeError._from_ptr", "Caller._invalidate", "Caller._context", "Trap._consume",
})
_FFI_NAMES = ("dll", "wasmtime_context_t", "wasmtime_instance_export_get", "wasmtime_func_call_unchecked",
              "wasmtime_val_raw_t",
              "wasmtime_extern_t", "wasmtime_func_t", "wasmtime_instance_t", "WASMTIME_EXTERN_FUNC",
              "WASMTIME_EXTERN_MEMORY", "wasmtime_linker_define_func_unchecked",
              "wasmtime_func_unchecked_callback_t", "wasmtime_caller_t", "wasmtime_caller_export_get")


def _fields(struct: Any) -> set[str]:
    return {field[0] for field in getattr(struct, "_fields_", ())}


def missing() -> list[str]:
    """What the fast path needs and this wasmtime-py lacks; empty when the fast path may be used.

    Checked as a whole, once, at import: a wasmtime-py that renamed any one of them must fall back to
    the public API for every call, not fail every call with an AttributeError.
    """
    if _ffi is None:
        return ["wasmtime._ffi, wasmtime._extern.wrap_extern or wasmtime._func.enter_wasm"]
    lacking = [f"wasmtime._ffi.{name}" for name in _FFI_NAMES if not hasattr(_ffi, name)]
    if lacking:
        return lacking
    try:
        if not {"kind", "of"} <= _fields(_ffi.wasmtime_extern_t):
            lacking.append("wasmtime._ffi.wasmtime_extern_t.kind/of")
        elif not {"func", "memory"} <= _fields(dict(_ffi.wasmtime_extern_t._fields_)["of"]):
            lacking.append("wasmtime._ffi.wasmtime_extern_t.of.func/memory")
        if "i32" not in _fields(_ffi.wasmtime_val_raw_t):
            lacking.append("wasmtime._ffi.wasmtime_val_raw_t.i32")
        for cls, method in ((wasmtime.Store, "_context"), (wasmtime.WasmtimeError, "_from_ptr"),
                            (wasmtime.Func, "_from_raw"), (wasmtime.Memory, "_from_raw"),
                            (wasmtime.Instance, "_from_raw")):
            if not callable(getattr(cls, method, None)):
                lacking.append(f"{cls.__name__}.{method}")
        for other, method in ((wasmtime.Caller, "_invalidate"), (wasmtime.Caller, "_context"),
                              (wasmtime.Trap, "_consume")):
            if not callable(getattr(other, method, None)):
                lacking.append(f"{other.__name__}.{method}")
        if not lacking:
            # Instance attributes: made the way export() and wasmtime-py's InstancePre make them.
            if not hasattr(wasmtime.Func._from_raw(_ffi.wasmtime_func_t()), "_func"):
                lacking.append("Func._func")
            if not hasattr(wasmtime.Instance._from_raw(_ffi.wasmtime_instance_t()), "_instance"):
                lacking.append("Instance._instance")
    except Exception as exc:  # noqa: BLE001 (any surprise in wasmtime-py's internals means: do not use them)
        lacking.append(f"({type(exc).__name__}: {exc})")
    return lacking


FAST = not missing()

#: A host import: ``fn(caller, *i32_args) -> i32``. It must not raise (edged.wasm.host.guard); if it does
#: anyway, the call traps with the exception's name instead of carrying it to another thread.
HostI32 = Callable[..., int]

#: Imports defined by ``define_i32``, by the id wasmtime hands back to the trampoline; an entry goes when
#: wasmtime drops the last linker or instance that uses it (the finalizer).
_HOSTS: dict[int, tuple[HostI32, int]] = {}
#: An argument's value (``wasmtime_val_raw_t.i32``).
_I32 = operator.attrgetter("i32")
_host_ids = itertools.count(1)


class _RawCaller(wasmtime.Caller):
    """A Caller whose ``get`` looks the export up as ``export`` does (no buffer copy, no import per call),
    and whose store context is only asked for when used (``Caller.__init__`` always asks, through a C call
    that hands the GIL over)."""

    def __init__(self, ptr: Any) -> None:  # noqa: PLW0231 (Caller.__init__ is what this replaces)
        self.raw_ptr: Any = ptr
        self.raw_context: Any = None

    def _context(self) -> Any:
        if self.raw_ptr is None:
            raise ValueError("caller is no longer valid")
        if self.raw_context is None:
            self.raw_context = _caller_context(self.raw_ptr)
        return self.raw_context

    def get(self, name: str) -> Any:
        if self.raw_ptr is None:
            return None
        item = _ffi.wasmtime_extern_t()
        raw = name.encode()
        found = _ffi.wasmtime_caller_export_get(self.raw_ptr, raw, len(raw), ctypes.byref(item))
        return _extern(item) if found else None

    def _invalidate(self) -> None:
        self.raw_ptr = None
        self.raw_context = None
        super()._invalidate()


def _host_call(env: int | None, caller_ptr: Any, values: Any, _count: int) -> int:
    caller = _RawCaller(caller_ptr)
    try:
        fn, params = _HOSTS[env or 0]
        values[0].i32 = _to_i32(fn(caller, *map(_I32, values[:params])))
        return 0
    except BaseException as exc:  # noqa: BLE001 (a ctypes callback must not raise: trap instead)
        trap = wasmtime.Trap(f"host import raised {type(exc).__name__}")._consume()
        return ctypes.cast(trap, ctypes.c_void_p).value or 0
    finally:
        caller._invalidate()


def _forget(env: int | None) -> None:
    _HOSTS.pop(env or 0, None)


if FAST:
    _EXTERN_FUNC = int(getattr(_ffi.WASMTIME_EXTERN_FUNC, "value", _ffi.WASMTIME_EXTERN_FUNC))
    _EXTERN_MEMORY = int(getattr(_ffi.WASMTIME_EXTERN_MEMORY, "value", _ffi.WASMTIME_EXTERN_MEMORY))
    # Made once and kept for the life of the process: wasmtime holds their addresses.
    # Quick, never blocks: keeps the GIL (PYFUNCTYPE); the result type is wasmtime-py's, for its Memory methods.
    _caller_context = ctypes.PYFUNCTYPE(ctypes.POINTER(_ffi.wasmtime_context_t), ctypes.c_void_p)(
        ("wasmtime_caller_context", _ffi.dll))
    _TRAMPOLINE = _ffi.wasmtime_func_unchecked_callback_t(_host_call)
    _FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_forget)


def define_i32(linker: wasmtime.Linker, module: str, name: str, params: int, fn: HostI32) -> None:
    """Define ``module.name: (i32 * params) -> i32`` on ``linker``, store-independent (any store may use it).

    ``fn`` gets a ``wasmtime.Caller`` (valid during the call only) and the arguments as signed ints.
    """
    if not FAST:
        i32 = wasmtime.ValType.i32
        linker.define_func(module, name, wasmtime.FuncType([i32() for _ in range(params)], [i32()]), fn,
                           access_caller=True)
        return
    ty = wasmtime.FuncType([wasmtime.ValType.i32() for _ in range(params)], [wasmtime.ValType.i32()])
    host_id = next(_host_ids)
    _HOSTS[host_id] = (fn, params)
    raw_module, raw_name = module.encode(), name.encode()
    error = _ffi.wasmtime_linker_define_func_unchecked(linker.ptr(), raw_module, len(raw_module), raw_name,
                                                       len(raw_name), ty.ptr(), _TRAMPOLINE, host_id, _FINALIZER)
    if error:
        _HOSTS.pop(host_id, None)
        raise wasmtime.WasmtimeError._from_ptr(error)


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> object | None:
    """The export ``name`` of ``instance`` (a Func, Memory, Global or Table), or None."""
    if not FAST:
        return instance.exports(store).get(name)
    item = _ffi.wasmtime_extern_t()
    raw = name.encode()
    found = _ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item))
    return _extern(item) if found else None


def _extern(item: Any) -> object:
    # The two kinds edged asks for, built directly (wrap_extern imports inside itself on every call).
    if item.kind == _EXTERN_FUNC:
        return wasmtime.Func._from_raw(item.of.func)
    if item.kind == _EXTERN_MEMORY:
        return wasmtime.Memory._from_raw(item.of.memory)
    other: object = _wrap_extern(item)
    return other


def call_i32(store: wasmtime.Store, func: wasmtime.Func, *args: int, results: int = 1) -> int | None:
    """Call ``func`` with i32 ``args``; its one i32 result, or None when ``results`` is 0.

    Arguments are taken modulo 2**32 (a u32 address may be passed as is).
    """
    if results not in (0, 1):
        raise ValueError("call_i32 handles zero or one result")
    if not FAST:
        signed = [_to_i32(a) for a in args]
        value = func(store, *signed)
        return None if results == 0 else int(value)
    slots = max(len(args), results, 1)
    buffer = (_ffi.wasmtime_val_raw_t * slots)()
    for i, value in enumerate(args):
        buffer[i].i32 = _to_i32(value)
    with _enter_wasm(store) as trap:
        error = _ffi.wasmtime_func_call_unchecked(store._context(), ctypes.byref(func._func), buffer, slots, trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    return int(buffer[0].i32) if results else None


def _to_i32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value
