"""A call's Store, instance and exports straight through wasmtime's C API: the frame-v1 call path.

wasmtime-py wraps every step of a call in Python objects (``Store``, ``Instance``, ``Func``, ``Memory``, a
context manager per guest entry) and each C function behind a Python function: about half of a no-op
call's time in the sandbox (bench/pool_bench.py ``noop``). ``RawCall`` does the same steps on raw
handles, with its own ctypes prototypes of the C functions from the library wasmtime-py loaded:

- quick functions that never run guest code nor block (store setup, export lookup, memory bounds) keep
  the GIL (``PYFUNCTYPE``), which also spares the hand-over of the GIL to another thread each time;
- instantiation, guest calls and the Store's deletion (which gives the instance slot back) release it.

Exports are looked up by their index in the module (``wasmtime_instance_export_nth``), checked once
against their names when the module is loaded (``RawCall.check_exports``). Nothing outlives a call but
the per-thread ``RawCall`` and its structs. Limits are exactly the public path's: the Store's memory
limit, its epoch deadline, the WASI context the runner configures. Traps and errors surface as from
wasmtime-py: ``wasmtime.Trap``, ``wasmtime.ExitTrap`` or ``wasmtime.WasmtimeError``.

Private names of wasmtime-py used here are in ``PRIVATE_NAMES`` (with rawcall's); ``FAST`` is False,
and runners take the public path, when any is missing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import wasmtime

from edged.wasm.memory import GuestMemory
from edged.wasm.rawcall import FAST as RAWCALL_FAST
from edged.wasm.rawcall import FFI

__all__ = ["FAST", "PRIVATE_NAMES", "RawCall", "missing"]

_ffi: Any = FFI

#: wasmtime-py internals used here beyond rawcall's (tests/test_rawstore.py keeps this complete).
PRIVATE_NAMES = frozenset({
    "wasmtime._ffi.dll", "wasmtime._func.maybe_raise_last_exn", "Engine.ptr", "InstancePre.ptr",
    "WasiConfig._consume", "Caller._context", "Trap._from_ptr", "WasmtimeError._from_ptr",
})

_VOID = ctypes.c_void_p
_HOLD, _RELEASE = ctypes.PYFUNCTYPE, ctypes.CFUNCTYPE
#: name -> (keeps the GIL, result, argument types)
_PROTOTYPES: dict[str, tuple[Any, Any, tuple[Any, ...]]] = {
    "wasmtime_store_new": (_HOLD, _VOID, (_VOID, _VOID, _VOID)),
    "wasmtime_store_context": (_HOLD, _VOID, (_VOID,)),
    "wasmtime_store_limiter": (_HOLD, None, (_VOID, *(ctypes.c_int64,) * 5)),
    "wasmtime_context_set_epoch_deadline": (_HOLD, None, (_VOID, ctypes.c_uint64)),
    "wasmtime_context_set_wasi": (_RELEASE, _VOID, (_VOID, _VOID)),
    "wasmtime_instance_pre_instantiate": (_RELEASE, _VOID, (_VOID, _VOID, _VOID, _VOID)),
    "wasmtime_instance_export_nth": (_HOLD, ctypes.c_bool, (_VOID, _VOID, ctypes.c_size_t, _VOID, _VOID, _VOID)),
    "wasmtime_func_call_unchecked": (_RELEASE, _VOID, (_VOID, _VOID, _VOID, ctypes.c_size_t, _VOID)),
    "wasmtime_memory_data": (_HOLD, _VOID, (_VOID, _VOID)),
    "wasmtime_memory_data_size": (_HOLD, ctypes.c_size_t, (_VOID, _VOID)),
    "wasmtime_store_delete": (_RELEASE, None, (_VOID,)),
}


def missing() -> list[str]:
    """What the raw path needs and this wasmtime-py lacks; empty when it may be used."""
    if not RAWCALL_FAST:
        return ["edged.wasm.rawcall's fast path"]
    lacking = [] if hasattr(_ffi, "dll") else ["wasmtime._ffi.dll"]
    lacking += [name for name in _PROTOTYPES if hasattr(_ffi, "dll") and not hasattr(_ffi.dll, name)]
    try:
        from wasmtime import _func

        if not callable(getattr(_func, "maybe_raise_last_exn", None)):
            lacking.append("wasmtime._func.maybe_raise_last_exn")
    except ImportError:  # pragma: no cover - checked by rawcall already
        lacking.append("wasmtime._func")
    for cls, method in ((wasmtime.Engine, "ptr"), (wasmtime.InstancePre, "ptr"), (wasmtime.WasiConfig, "_consume"),
                        (wasmtime.Caller, "_context"), (wasmtime.Trap, "_from_ptr")):
        if not callable(getattr(cls, method, None)):
            lacking.append(f"{cls.__name__}.{method}")
    return lacking


FAST = not missing()

if FAST:
    _c = {name: kind(result, *args)((name, _ffi.dll)) for name, (kind, result, args) in _PROTOTYPES.items()}
    _store_new, _store_context = _c["wasmtime_store_new"], _c["wasmtime_store_context"]
    _limiter, _set_deadline = _c["wasmtime_store_limiter"], _c["wasmtime_context_set_epoch_deadline"]
    _set_wasi, _instantiate = _c["wasmtime_context_set_wasi"], _c["wasmtime_instance_pre_instantiate"]
    _export_nth, _call = _c["wasmtime_instance_export_nth"], _c["wasmtime_func_call_unchecked"]
    _memory_data, _memory_size = _c["wasmtime_memory_data"], _c["wasmtime_memory_data_size"]
    _store_delete = _c["wasmtime_store_delete"]
    from wasmtime._func import maybe_raise_last_exn as _last_exn

    _ERROR_P = ctypes.POINTER(_ffi.wasmtime_error_t)
    _TRAP_P = ctypes.POINTER(_ffi.wasm_trap_t)


def _raise(error: int | None, trap: ctypes.c_void_p) -> None:
    """Raise what wasmtime-py raises for an error or trap handed back by a C call (none: return)."""
    if error:
        _last_exn()
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, _ERROR_P))
    if trap.value:
        value, trap.value = trap.value, None
        found = wasmtime.Trap._from_ptr(ctypes.cast(value, _TRAP_P))
        _last_exn()
        raise found


class RawCall:
    """One thread's calls of one module: ``open`` a Store, ``instantiate`` (looking up the exports a call
    uses, in one pass), ``call`` them by index, ``close``. Reused call after call on the thread that made it:
    its structs, and the ctypes references to them, are made once and are scratch space."""

    def __init__(self, engine: wasmtime.Engine, pre: wasmtime.InstancePre, exports: int) -> None:
        self._engine = engine.ptr()
        self._pre = pre  # keeps the InstancePre (and its linker's host functions) alive
        self._pre_ptr = pre.ptr()
        self._store: int | None = None
        self._ctx: int = 0
        self._instance = _ffi.wasmtime_instance_t()
        self._items = [_ffi.wasmtime_extern_t() for _ in range(exports)]
        self._trap = ctypes.c_void_p()
        self._name = ctypes.c_void_p()
        self._name_len = ctypes.c_size_t()
        self._args = (_ffi.wasmtime_val_raw_t * 2)()
        # Made once: a reference per struct (and per export's func/memory member) for the C calls.
        byref = ctypes.byref
        self._instance_ref, self._trap_ref = byref(self._instance), byref(self._trap)
        self._name_ref, self._name_len_ref = byref(self._name), byref(self._name_len)
        self._item_refs = [byref(item) for item in self._items]
        self._func_refs = [byref(item.of.func) for item in self._items]
        self._memory_refs = [byref(item.of.memory) for item in self._items]
        self._slots = (self._args[0], self._args[1])
        self._memory_ref: Any = None
        #: Whether export i was looked up in the open Store's instance (a stale struct names another Store).
        self._live = [False] * exports

    def open(self, memory_limit: int, ticks: int, wasi: wasmtime.WasiConfig | None) -> None:
        """A fresh Store with the call's memory limit, epoch deadline and WASI context (or none)."""
        store = _store_new(self._engine, None, None)
        self._store = store
        ctx = self._ctx = _store_context(store)
        _limiter(store, memory_limit, -1, -1, -1, -1)
        _set_deadline(ctx, ticks)
        if wasi is not None:
            _raise(_set_wasi(ctx, wasi._consume()), self._trap)

    def instantiate(self, memory_index: int, exports: Sequence[int] = ()) -> None:
        """A fresh instance in the open Store; its export ``memory_index`` is the memory host imports see.
        ``exports``: the other exports this call uses, looked up now (negative ones are skipped)."""
        ctx, instance, name, name_len = self._ctx, self._instance_ref, self._name_ref, self._name_len_ref
        _raise(_instantiate(self._pre_ptr, ctx, instance, self._trap_ref), self._trap)
        items, live = self._item_refs, self._live
        for index in (memory_index, *exports):
            if index >= 0:
                if not _export_nth(ctx, instance, index, name, name_len, items[index]):
                    raise wasmtime.WasmtimeError(f"the instance has no export {index}")
                live[index] = True
        self._memory_ref = self._memory_refs[memory_index]

    def export(self, index: int) -> Any:
        """Look export ``index`` up into its struct (``wasmtime_extern_t``), which is returned."""
        if not _export_nth(self._ctx, self._instance_ref, index, self._name_ref, self._name_len_ref,
                           self._item_refs[index]):
            raise wasmtime.WasmtimeError(f"the instance has no export {index}")
        self._live[index] = True
        return self._items[index]

    def export_name(self, index: int) -> str:
        """The name of export ``index`` (a load-time check that indexes match names)."""
        self.export(index)
        return ctypes.string_at(self._name.value or 0, self._name_len.value).decode("utf-8", "replace")

    def call(self, index: int, *args: int, results: int = 1) -> int:
        """Call the exported function ``index`` (looked up now unless ``instantiate`` did), whose type is
        ``(i32 * len(args)) -> (i32 * results)``, validated at load. Returns its result (0 with no result)."""
        if not self._live[index]:
            self.export(index)
        slots = self._slots
        for i, value in enumerate(args):
            slots[i].i32 = ((value & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000
        error = _call(self._ctx, self._func_refs[index], self._args, 2, self._trap_ref)
        if error or self._trap.value:
            _raise(error, self._trap)
        return int(slots[0].i32) if results else 0

    def memory(self, caller: wasmtime.Caller | None = None) -> GuestMemory:
        """The instance's memory as it is now; from inside a host import, pass its ``caller``."""
        ctx = self._ctx if caller is None else caller._context()
        mem = self._memory_ref
        return GuestMemory.at(_memory_data(ctx, mem) or 0, _memory_size(ctx, mem))

    def memory_size(self) -> int:
        """Bytes of the instance's memory now (0 before instantiation)."""
        if self._store is None or self._memory_ref is None:
            return 0
        return int(_memory_size(self._ctx, self._memory_ref))

    def close(self) -> None:
        """Drop the Store, and with it the instance; its slot is free again."""
        store, self._store = self._store, None
        self._memory_ref = None
        self._live = [False] * len(self._live)
        if store is not None:
            _store_delete(store)


def indexes(module: wasmtime.Module, names: Sequence[str]) -> dict[str, int]:
    """Each of ``names`` that ``module`` exports, by its export index."""
    wanted = set(names)
    return {e.name: i for i, e in enumerate(module.exports) if e.name in wanted}
