"""Deploying functions over the API: upload, define a version, roll back, delete, and the rollback loop.

Each change is made on a copy of the registry, swapped into the pool through the face (the same path a
reload takes: ``DeployTarget.apply_deployed``), then saved; only then does it become the registry. A swap
that fails changes nothing; a save that fails puts the running functions back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from edged.deploy.ceilings import check_grants
from edged.deploy.modules import ModuleStore, digest_hex
from edged.deploy.registry import Deployed, Registry, Version, registry_path
from edged.deploy.rollback import Report, RollbackWatch
from edged.deploy.runnable import merge_functions, runnable, settings_of
from edged.deploy.space import ModuleSpace, referenced
from edged.errors import (
    BadModule,
    BadRequest,
    DeployConflict,
    DigestMismatch,
    InvalidSpec,
    ReadOnlyFunction,
    UnknownFunction,
    UnknownModule,
)
from edged.settings import FUNCTION_NAME, ConfigError, FunctionSettings, ModelSettings, Settings

__all__ = ["DeployTarget", "Deployer", "merge_functions"]

log = logging.getLogger(__name__)


class DeployTarget(Protocol):
    """What the deployer needs from the daemon (edged.app.App)."""

    settings: Settings  # the running config: its functions are read-only here

    def compile_module(self, wasm: bytes, label: str) -> None: ...
    async def apply_deployed(self, functions: Mapping[str, FunctionSettings]) -> None: ...


def _invalid(exc: ValidationError) -> InvalidSpec:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(spec)"
    return InvalidSpec(f"{where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)"
                                                      if exc.error_count() > 1 else ""))


class Deployer:
    """The API's functions: their modules, versions and grants, kept under ``state_dir``."""

    def __init__(self, target: DeployTarget, metrics: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        settings = target.settings
        self._target = target
        self._ceilings = settings.deploy
        self._clock = clock
        self.modules = ModuleStore(settings.state_dir)
        self.space = ModuleSpace(self.modules, self._ceilings, metrics, clock)
        try:
            self._registry = Registry.load(registry_path(settings.state_dir))
        except ValueError as exc:
            raise ConfigError([("deploy", str(exc))]) from exc
        #: Held while the registry changes; a reload holds it too, so it swaps in a settled registry.
        self.lock = asyncio.Lock()
        self._reports: asyncio.Queue[Report] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watch = RollbackWatch(self._ceilings.auto_rollback_after, self._post)
        self.rollbacks = Counter("edged_deploy_rollbacks", "Deployed versions rolled back, by reason (auto, "
                                 "manual).", ["function", "reason"], registry=metrics)
        for name, entry in self._registry.functions.items():
            self._track(name, entry.running, watch=False)

    # -- what runs -------------------------------------------------------------------------------------

    def _track(self, name: str, version: Version, *, watch: bool) -> None:
        self.watch.track(name, settings_of(self.modules, version.spec), version.number, succeeded=version.succeeded,
                         watch=watch)

    def live(self, models: Mapping[str, ModelSettings],
             registry: Registry | None = None) -> dict[str, FunctionSettings]:
        """The current version of every deployed function that can run: its module is here, its models are
        declared and its grants are within today's ceilings. Any other is logged and left out."""
        return runnable(registry or self._registry, self.modules, models, self._ceilings)

    async def _commit(self, candidate: Registry) -> None:
        try:
            await self._target.apply_deployed(self.live(self._target.settings.models, candidate))
        except ConfigError as exc:  # FunctionLoadError: the module does not speak its ABI, say
            raise BadModule(str(exc)) from exc
        try:
            await asyncio.to_thread(candidate.save)
        except OSError:
            await self._target.apply_deployed(self.live(self._target.settings.models))
            raise
        self._registry = candidate

    # -- the API ---------------------------------------------------------------------------------------

    async def upload(self, ref: str, wasm: bytes, sha256: str) -> bool:
        """Store and compile the module whose digest is ``ref`` (``sha256`` is the body's); True when new."""
        hexdigest = digest_hex(ref)
        if hexdigest is None:
            raise BadRequest(f"{ref[:80]!r} is not a module digest: sha256:<64 lowercase hex digits>")
        if sha256 != hexdigest:
            raise DigestMismatch(f"the body's digest is sha256:{sha256}, not {ref}")
        if not self.modules.has(hexdigest):
            try:
                await asyncio.to_thread(self._target.compile_module, wasm, ref)
            except ValueError as exc:
                raise BadModule(str(exc)) from exc
        async with self.lock:  # the registry settled: what is referenced cannot change under make_room
            if not self.modules.has(hexdigest):
                await asyncio.to_thread(self.space.make_room, len(wasm), self._referenced())
            # A known module's upload time is renewed: its grace period starts again.
            new = await asyncio.to_thread(self.modules.put, hexdigest, wasm, self._clock())
        if new:
            log.info("module %s stored (%d bytes)", ref, len(wasm))
        return new

    def _referenced(self) -> set[str]:
        return referenced(self._registry, self.modules,
                          (fn.module for fn in self._target.settings.functions.values()))

    async def _collect(self) -> None:
        """Remove the modules no kept version uses any more (past their grace period); the change that
        freed them is made either way."""
        try:
            await asyncio.to_thread(self.space.collect, self._referenced())
        except OSError as exc:
            log.warning("module store: removing unreferenced modules failed: %s", exc)

    def _need_module(self, hexdigest: str) -> None:
        ref = f"sha256:{hexdigest}"
        if not self.modules.has(hexdigest):
            raise UnknownModule(f"no module {ref} was uploaded (PUT /v1/modules/{ref} first)")

    def _writable(self, name: str) -> None:
        if not FUNCTION_NAME.fullmatch(name):
            raise InvalidSpec(f"{name[:80]!r}: names are lowercase letters, digits, '-' and '_' "
                              "(a letter first, 63 at most)")
        if name in self._target.settings.functions:
            raise ReadOnlyFunction(f"{name!r} comes from the config file: it cannot be changed over the API")

    async def define(self, name: str, body: object) -> tuple[dict[str, Any], bool]:
        """Make ``body`` (the JSON spec) the new version of ``name``; the document and whether it is new."""
        self._writable(name)
        if not isinstance(body, dict):
            raise InvalidSpec("the spec is a JSON object")
        ref = body.get("module")
        hexdigest = digest_hex(ref) if isinstance(ref, str) else None
        if hexdigest is None:
            raise InvalidSpec('module: "sha256:<64 lowercase hex digits>" of an uploaded module')
        self._need_module(hexdigest)
        try:
            fn = FunctionSettings.model_validate({**body, "module": self.modules.path(hexdigest)})
        except ValidationError as exc:
            raise _invalid(exc) from exc
        check_grants(name, fn, self._ceilings)
        spec = {**fn.model_dump(mode="json"), "module": ref}
        async with self.lock:
            self._loop = asyncio.get_running_loop()
            entry = self._registry.functions.get(name)
            if entry is not None and entry.running.spec == spec:
                return self.document(name), False
            self._need_module(hexdigest)  # again, under the lock: no cleanup runs until it is referenced
            candidate = self._registry.copy()
            entry = candidate.functions.setdefault(name, Deployed(current=0))
            previous = entry.running if entry.versions else None
            if previous is not None and self.watch.succeeded(name, previous.number):
                previous.succeeded = True
            version = entry.add(spec, self._clock(), self._ceilings.keep_versions)
            await self._commit(candidate)
            await self._collect()  # the versions add() let go of may have been a module's last users
            watch = previous is not None and previous.succeeded and self._ceilings.auto_rollback_after > 0
            self._track(name, version, watch=watch)
            log.info("function %s: version %d deployed (%s)", name, version.number, ref)
            return self.document(name), True

    async def rollback(self, name: str, *, reason: str = "manual", only: int | None = None) -> dict[str, Any]:
        """Put the version that ``name``'s current one replaced back; with ``only``, just if that is current."""
        self._writable(name)
        async with self.lock:
            entry = self._registry.functions.get(name)
            if entry is None:
                raise UnknownFunction(f"no deployed function named {name!r}")
            if only is not None and entry.current != only:
                return self.document(name)  # changed since the failures were seen: nothing to undo
            bad, back = entry.running, entry.running.previous
            if back is None or back not in entry.versions:
                raise DeployConflict(f"{name!r} version {bad.number} has no earlier version kept")
            candidate = self._registry.copy()
            candidate.functions[name].current = back
            await self._commit(candidate)
            self._track(name, candidate.functions[name].running, watch=False)
            self.rollbacks.labels(name, reason).inc()
            return self.document(name)

    async def delete(self, name: str) -> None:
        self._writable(name)
        async with self.lock:
            if name not in self._registry.functions:
                raise UnknownFunction(f"no deployed function named {name!r}")
            candidate = self._registry.copy()
            del candidate.functions[name]
            await self._commit(candidate)
            self.watch.forget(name)
            await self._collect()
            log.info("function %s deleted", name)

    async def describe(self, name: str) -> dict[str, Any]:
        """The config's function or the deployed one by that name; UnknownFunction if neither."""
        fn = self._target.settings.functions.get(name)
        if fn is not None:
            try:
                wasm = await asyncio.to_thread(fn.module.read_bytes)
                digest: str | None = f"sha256:{hashlib.sha256(wasm).hexdigest()}"
            except OSError:
                digest = None  # removed or replaced since it was loaded: the running copy has no file
            return {"name": name, "origin": "config", "version": None, "digest": digest,
                    "spec": fn.model_dump(mode="json"), "versions": []}
        if name not in self._registry.functions:
            raise UnknownFunction(f"no function named {name!r}")
        return self.document(name)

    def document(self, name: str) -> dict[str, Any]:
        entry = self._registry.functions[name]
        run = entry.running
        earlier = [{"version": v.number, "digest": v.digest, "created_at": v.created_at, "succeeded": v.succeeded}
                   for v in reversed(entry.versions.values()) if v.number != run.number]
        return {"name": name, "origin": "api", "version": run.number, "digest": run.digest, "spec": run.spec,
                "created_at": run.created_at, "previous": run.previous,
                "succeeded": run.succeeded or self.watch.succeeded(name, run.number), "versions": earlier}

    # -- reports from the worker threads ---------------------------------------------------------------

    def _post(self, report: Report) -> None:
        loop = self._loop
        if loop is not None:  # none before the first deploy: nothing is watched yet
            loop.call_soon_threadsafe(self._reports.put_nowait, report)

    async def run(self) -> None:
        """Roll back the versions whose first calls failed, and remember those that worked."""
        self._loop = asyncio.get_running_loop()
        while True:
            report = await self._reports.get()
            try:
                if report.kind == "failed":
                    await self._auto_rollback(report)
                else:
                    await self._remember(report)
            except Exception:
                log.exception("deploy: handling %s of %s version %d failed", report.kind, report.function,
                              report.version)

    async def _auto_rollback(self, report: Report) -> None:
        doc = await self.rollback(report.function, reason="auto", only=report.version)
        if doc["version"] != report.version:
            log.warning("function %s: version %d rolled back to version %s automatically: %s",
                        report.function, report.version, doc["version"], report.detail,
                        extra={"FUNCTION": report.function})

    async def _remember(self, report: Report) -> None:
        async with self.lock:
            entry = self._registry.functions.get(report.function)
            if entry is None or entry.current != report.version or entry.running.succeeded:
                return
            candidate = self._registry.copy()
            candidate.functions[report.function].running.succeeded = True
            await asyncio.to_thread(candidate.save)
            self._registry = candidate
