"""The wasmtime Engine and an on-disk cache of compiled modules.

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
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

__all__ = ["ENGINE_SETTINGS", "CacheStats", "WasmEngine"]

log = logging.getLogger(__name__)

#: Every Config setting edged makes; part of the cache key, so changing one invalidates the cache.
ENGINE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("epoch_interruption", "true"),
    ("cranelift_opt_level", "speed"),
)


def _new_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
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
    """One wasmtime Engine plus the compiled-module cache in ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.engine = _new_engine()
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
        started = time.perf_counter()
        wasm = path.read_bytes()
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
        log.info("module %s loaded (%s) in %.1f ms", path, how, (time.perf_counter() - started) * 1000)
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
        """Write atomically (temporary file, fsync, rename): a crash leaves no half-written entry behind."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".cwasm")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(module.serialize())
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, cached)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A read-only or full disk costs a recompile next start, nothing else.
            log.warning("cannot cache compiled module in %s: %s", self.cache_dir, exc)
