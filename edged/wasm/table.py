"""The pool's function table: one runner per function, swapped whole on a reload.

A job takes the table current when it is admitted and holds it until it ends (``users``), so calls in
flight finish on the runners they started with while new calls use the new table. A table replaced by
``swap`` is retired: its ``on_idle`` hook (which releases the models only it used) runs once its last
job ends, at once if none is running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import wasmtime

from edged.settings import FunctionSettings
from edged.wasm.command import CommandRunner
from edged.wasm.engine import WasmEngine
from edged.wasm.host.link import HostExtension
from edged.wasm.need import MaxFrameSectionError, declared_need
from edged.wasm.outcome import FunctionLoadError, trap_summary
from edged.wasm.reactor import FrameRunner
from edged.wasm.runner import FunctionRunner

__all__ = ["FunctionTable", "load_runner", "load_runners"]

log = logging.getLogger(__name__)

#: The runner for each ``abi`` setting.
_RUNNERS: dict[str, type[FunctionRunner]] = {FrameRunner.abi: FrameRunner, CommandRunner.abi: CommandRunner}


def load_runner(engine: WasmEngine, name: str, settings: FunctionSettings, tick_ms: float,
                extension: HostExtension | None) -> FunctionRunner:
    """Compile (or load from the cache) and validate one function's module; FunctionLoadError if unusable."""
    try:
        module = engine.load_module(settings.module)
    except OSError as exc:
        raise FunctionLoadError(name, f"cannot read {settings.module}: {exc.strerror or exc}") from exc
    except wasmtime.WasmtimeError as exc:
        raise FunctionLoadError(name, f"{settings.module} is not a valid module: "
                                      f"{trap_summary(str(exc))}") from exc
    runner = _RUNNERS[settings.abi](name, settings, module, engine.engine, tick_ms, extension)
    try:
        runner.need = declared_need(settings)
    except (OSError, MaxFrameSectionError) as exc:
        raise FunctionLoadError(name, f"{settings.module}: {exc}") from exc
    runner.validate()
    return runner


def load_runners(engine: WasmEngine, functions: Mapping[str, FunctionSettings], tick_ms: float,
                 extension: HostExtension | None, slot_mb: int | None = None) -> dict[str, FunctionRunner]:
    """A runner for every function; FunctionLoadError naming the first unusable one. With ``slot_mb`` (the
    running pool's instance slot size) a function needing more memory is refused: that needs a restart."""
    runners: dict[str, FunctionRunner] = {}
    for name, fn in functions.items():
        if slot_mb is not None and fn.memory_mb > slot_mb:
            raise FunctionLoadError(name, f"memory_mb = {fn.memory_mb} is more than the running pool's "
                                          f"instance slots ({slot_mb} MiB): needs a restart")
        runners[name] = load_runner(engine, name, fn, tick_ms, extension)
    return runners


class FunctionTable:
    """Functions by name, their runners once loaded, and how many jobs use them (under the pool's lock)."""

    def __init__(self, functions: Mapping[str, FunctionSettings], runners: Mapping[str, FunctionRunner],
                 on_idle: Callable[[], None] | None = None) -> None:
        self.functions = dict(functions)
        self.runners = dict(runners)
        self.users = 0
        self.retired = False
        self._on_idle = on_idle
        self._once = threading.Lock()

    def retire(self, on_idle: Callable[[], None] | None) -> None:
        """Mark this table replaced (under the pool's lock); ``on_idle`` runs after its last job."""
        self.retired = True
        self._on_idle = on_idle

    def idle_if_retired(self) -> None:
        """Run ``on_idle`` once, when this table is retired and no job uses it (called outside the lock)."""
        if not (self.retired and self.users == 0) or self._on_idle is None:
            return
        with self._once:
            hook, self._on_idle = self._on_idle, None
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("releasing a replaced function table failed")
