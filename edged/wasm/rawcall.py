"""Export lookup and calls of i32 functions without wasmtime-py's per-call type conversion.

``Instance.exports(store)`` builds a map of every export, and ``Func.__call__`` asks the function's type
and converts every argument through new ``ValType`` objects: together about 60 % of a no-op call's time
(measured, bench/pool_bench.py). A call through edged needs three exports and two or three calls whose
signatures were checked when the module was loaded (``FunctionRunner.validate``), so this module looks
exports up by name (``wasmtime_instance_export_get``) and calls them through
``wasmtime_func_call_unchecked``, both from the C API bindings that wasmtime-py itself ships.

Those bindings are wasmtime-py internals, so pyproject pins ``wasmtime>=50,<51`` and everything here falls
back to the public API when a name is missing (``FAST`` says which is in use). Traps and errors surface
exactly as from the public API: ``wasmtime.Trap``, ``wasmtime.ExitTrap`` or ``wasmtime.WasmtimeError``.

Only call ``call_i32`` on a function whose signature is known to be ``(i32 * len(args)) -> (i32 * results)``
with ``results`` at most 1: the unchecked call trusts it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime

__all__ = ["FAST", "FFI", "call_i32", "export"]

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
FAST = FFI is not None and all(hasattr(FFI, name) for name in (
    "wasmtime_instance_export_get", "wasmtime_func_call_unchecked", "wasmtime_val_raw_t", "wasmtime_extern_t",
    "WASMTIME_EXTERN_FUNC", "WASMTIME_EXTERN_MEMORY")) and all(
    hasattr(cls, "_from_raw") for cls in (wasmtime.Func, wasmtime.Memory))
if FAST:
    _EXTERN_FUNC = int(getattr(_ffi.WASMTIME_EXTERN_FUNC, "value", _ffi.WASMTIME_EXTERN_FUNC))
    _EXTERN_MEMORY = int(getattr(_ffi.WASMTIME_EXTERN_MEMORY, "value", _ffi.WASMTIME_EXTERN_MEMORY))


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> object | None:
    """The export ``name`` of ``instance`` (a Func, Memory, Global or Table), or None."""
    if not FAST:
        return instance.exports(store).get(name)
    item = _ffi.wasmtime_extern_t()
    raw = name.encode()
    found = _ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item))
    if not found:
        return None
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
