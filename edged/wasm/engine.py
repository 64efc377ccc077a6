"""The wasmtime Engine (with a pooling instance allocator) and an on-disk cache of compiled modules.

Pooling allocator: by default wasmtime maps a fresh linear memory for every instance and unmaps it when
the Store goes; with several threads that unmap costs TLB shootdowns across CPUs, and every page the
guest touches faults in again. The pooling allocator reserves a fixed number of instance slots up front
and resets a slot's memory when its instance goes (zeroing up to ``keep_resident`` bytes in place and
handing the rest back with madvise), so every call still starts from a fresh, zeroed instance. Measured
with bench/pool_bench.py: a no-op call inside the worker went from 187 to ~110 us. The C API exposes it
but wasmtime-py's Config does not, so it is set through the bindings wasmtime-py ships (as in
``edged.wasm.rawcall``), and edged falls back to the default allocator when they are missing.

Compiling a Rust module takes hundreds of milliseconds; loading its serialized form takes a fraction of
one. A cache entry is keyed by everything that makes a serialized module loadable: the module's bytes,
the wasmtime version, the engine settings set here and the machine. ``Module.deserialize_file`` trusts
its input, so the cache directory must be writable by the daemon only (it lives under ``state_dir``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from edged.atomic import write_atomic
from edged.wasm.rawcall import FFI

__all__ = ["ENGINE_SETTINGS", "CacheStats", "InstanceSlots", "WasmEngine"]

log = logging.getLogger(__name__)

#: Every code-generation setting edged makes; part of the cache key, so changing one invalidates the cache.
#: (The allocator's slot counts and sizes do not change compiled code and are not in the key.)
ENGINE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("epoch_interruption", "true"),
    ("cranelift_opt_level", "speed"),
)

MiB = 1024 * 1024

_ffi: Any = FFI
POOLING = _ffi is not None and all(hasattr(_ffi, f"wasmtime_pooling_allocation_{name}") for name in (
    "config_new", "config_delete", "config_total_core_instances_set", "config_total_memories_set",
    "config_total_tables_set", "config_max_memory_size_set", "config_table_elements_set",
    "config_linear_memory_keep_resident_set", "config_table_keep_resident_set",
    "config_max_memories_per_module_set", "config_max_tables_per_module_set", "strategy_set"))


@dataclass(frozen=True, slots=True)
class InstanceSlots:
    """Sizes of the pooling allocator. ``count`` bounds live instances (one per running call, plus margin)."""

    count: int
    max_memory_bytes: int
    keep_resident_bytes: int = 0
    table_elements: int = 65_536
    memories_per_module: int = 1
    tables_per_module: int = 1


def _pooling(config: wasmtime.Config, slots: InstanceSlots) -> None:
    pc = _ffi.wasmtime_pooling_allocation_config_new()
    try:
        _ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pc, slots.count)
        _ffi.wasmtime_pooling_allocation_config_total_memories_set(pc, slots.count * slots.memories_per_module)
        _ffi.wasmtime_pooling_allocation_config_total_tables_set(pc, slots.count * slots.tables_per_module)
        _ffi.wasmtime_pooling_allocation_config_max_memories_per_module_set(pc, slots.memories_per_module)
        _ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pc, slots.tables_per_module)
        _ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pc, slots.max_memory_bytes)
        _ffi.wasmtime_pooling_allocation_config_table_elements_set(pc, slots.table_elements)
        _ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pc, slots.keep_resident_bytes)
        _ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pc, min(slots.keep_resident_bytes, MiB))
        _ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pc)  # copies the settings
    finally:
        _ffi.wasmtime_pooling_allocation_config_delete(pc)


#: Address space the pool may reserve (each slot reserves wasmtime's default 4 GiB plus guards for its
#: memory). 64-bit ARM kernels with 39-bit addresses give a process 512 GiB; stay well inside that.
MAX_POOL_RESERVATION = 128 * 1024 * MiB
_SLOT_RESERVATION = 4 * 1024 * MiB + 64 * MiB


def _use_pooling(slots: InstanceSlots | None) -> bool:
    if slots is None or not POOLING:
        return False
    if slots.count * slots.memories_per_module * _SLOT_RESERVATION > MAX_POOL_RESERVATION:
        log.warning("%d instance slots would reserve more than %d GiB of address space; using the default "
                    "allocator (a fresh memory mapping per call)", slots.count, MAX_POOL_RESERVATION // (1024 * MiB))
        return False
    return True


def _new_engine(pooling: InstanceSlots | None) -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    if pooling is not None:
        _pooling(config, pooling)
    return wasmtime.Engine(config)


def _cache_salt() -> str:
    settings = ";".join(f"{key}={value}" for key, value in ENGINE_SETTINGS)
    settings_hash = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return f"wasmtime-{importlib.metadata.version('wasmtime')}|{settings_hash}|{platform.machine()}"


@dataclass(slots=True)
class CacheStats:
    """How modules were loaded by this engine: from the cache, compiled, and cache files thrown away."""

    hits: int = 0
    compiled: int = 0
    discarded: int = 0


class WasmEngine:
    """One wasmtime Engine plus the compiled-module cache in ``cache_dir``.

    With ``slots``, instances come from a pooling allocator of that size (when wasmtime-py allows it;
    ``pooling`` says whether it does): at most ``slots.count`` live at once, each memory at most
    ``slots.max_memory_bytes``; one more fails to instantiate with a WasmtimeError.
    """

    def __init__(self, cache_dir: Path, slots: InstanceSlots | None = None) -> None:
        self.pooling = _use_pooling(slots)
        self.engine = _new_engine(slots if self.pooling else None)
        self.cache_dir = cache_dir
        self.stats = CacheStats()
        self._salt = _cache_salt()
        self._lock = threading.Lock()

    def increment_epoch(self) -> None:
        self.engine.increment_epoch()

    def cache_path(self, wasm: bytes) -> Path:
        """Where the compiled form of ``wasm`` is (or would be) cached."""
        digest = hashlib.sha256(wasm).hexdigest()
        key = hashlib.sha256(f"{digest}|{self._salt}".encode()).hexdigest()
        return self.cache_dir / f"{digest[:16]}-{key[:32]}.cwasm"

    def load_module(self, path: Path) -> wasmtime.Module:
        """Load ``path`` from the cache, or compile it and cache it; log which and how long it took.

        Raises OSError when the module cannot be read and WasmtimeError when it does not compile.
        """
        return self.load_bytes(path.read_bytes(), str(path))

    def load_bytes(self, wasm: bytes, label: str) -> wasmtime.Module:
        """``wasm`` from the cache, or compiled and cached (``label`` names it in the log); WasmtimeError
        when it does not compile."""
        started = time.perf_counter()
        cached = self.cache_path(wasm)
        module = self._from_cache(cached)
        how = "cached"
        if module is None:
            module = wasmtime.Module(self.engine, wasm)
            how = "compiled"
            self._store(cached, module)
        with self._lock:
            if how == "cached":
                self.stats.hits += 1
            else:
                self.stats.compiled += 1
        log.info("module %s loaded (%s) in %.1f ms", label, how, (time.perf_counter() - started) * 1000)
        return module

    def _from_cache(self, cached: Path) -> wasmtime.Module | None:
        if not cached.is_file():
            return None
        try:
            return wasmtime.Module.deserialize_file(self.engine, str(cached))
        except wasmtime.WasmtimeError as exc:
            reason = str(exc).replace("\n", " ")
            log.warning("cached module %s is corrupt or incompatible, recompiling: %s", cached, reason)
            with self._lock:
                self.stats.discarded += 1
            with contextlib.suppress(OSError):
                cached.unlink()
            return None

    def _store(self, cached: Path, module: wasmtime.Module) -> None:
        """Write atomically (edged.atomic): a crash leaves no half-written entry behind."""
        try:
            write_atomic(cached, module.serialize())
        except OSError as exc:
            # A read-only or full disk costs a recompile next start, nothing else.
            log.warning("cannot cache compiled module in %s: %s", self.cache_dir, exc)
