"""The module store's bound (``deploy.max_modules_bytes``) and which stored modules may be removed.

A module is referenced while any kept version of any API function uses it (or a config function names
its file). An unreferenced one may go once it is older than ``deploy.module_grace``, counted from its
upload (renewed when it is uploaded again), so "upload, then PUT the function" never loses the module to
a cleanup in between. Modules go, oldest first, after a version is pruned or a function deleted
(``collect``) and when an upload needs room (``make_room``). Callers hold the deployer's lock: the
registry does not change while either decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from edged.deploy.modules import ModuleStore, Stored, digest_hex
from edged.deploy.registry import Registry
from edged.errors import ModuleStoreFull
from edged.settings import DeploySettings

__all__ = ["ModuleSpace", "referenced"]

log = logging.getLogger(__name__)


def referenced(registry: Registry, store: ModuleStore, config_modules: Iterable[Path] = ()) -> set[str]:
    """The hex digests of the modules that must stay: every kept version's, and any config function's
    module that is a file of the store."""
    keep = {hexdigest for entry in registry.functions.values() for version in entry.versions.values()
            if (hexdigest := digest_hex(version.digest)) is not None}
    keep.update(ref[7:] for path in config_modules if (ref := store.digest_of(path)) is not None)
    return keep


class ModuleSpace:
    """Keeps ``store`` within ``ceilings.max_modules_bytes``; counts and logs what it removes."""

    def __init__(self, store: ModuleStore, ceilings: DeploySettings, metrics: CollectorRegistry,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._cap = ceilings.max_modules_bytes
        self._grace = ceilings.module_grace
        self._clock = clock
        self.removed = Counter("edged_deploy_modules_removed", "Stored modules removed, by reason (unreferenced: "
                               "after a version was pruned or a function deleted; space: to make room for an "
                               "upload).", ["reason"], registry=metrics)

    def _removable(self, stored: list[Stored], keep: set[str]) -> list[Stored]:
        cutoff = self._clock() - self._grace
        return sorted((m for m in stored if m.hexdigest not in keep and m.uploaded_at <= cutoff),
                      key=lambda m: m.uploaded_at)

    def collect(self, keep: set[str]) -> None:
        """Remove every unreferenced module past its grace period."""
        self._remove(self._removable(self._store.stored(), keep), "unreferenced")

    def make_room(self, size: int, keep: set[str]) -> None:
        """Room for ``size`` more bytes: the oldest removable modules go first; ModuleStoreFull if that is
        not enough (what was removable is gone either way: nothing refers to it)."""
        stored = self._store.stored()
        total = sum(m.size for m in stored) + size
        if total <= self._cap:
            return
        going: list[Stored] = []
        for module in self._removable(stored, keep):
            going.append(module)
            total -= module.size
            if total <= self._cap:
                break
        self._remove(going, "space")
        if total > self._cap:
            raise ModuleStoreFull(f"{size} bytes more would take the module store to {total} bytes, over "
                                  f"deploy.max_modules_bytes = {self._cap}; the rest is used by kept versions "
                                  f"or younger than deploy.module_grace = {self._grace:g} s")

    def _remove(self, modules: list[Stored], reason: str) -> None:
        gone = [m for m in modules if self._store.remove(m.hexdigest)]
        if gone:
            self.removed.labels(reason).inc(len(gone))
            log.info("module store: removed %d module(s) (%s), %d bytes: %s", len(gone), reason,
                     sum(m.size for m in gone), ", ".join(f"sha256:{m.hexdigest}" for m in gone))
