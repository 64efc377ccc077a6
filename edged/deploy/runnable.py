"""Which deployed functions run beside the config's: the current version of each whose module is stored,
whose models are declared and whose grants are within today's ceilings; and the one merge of the two sets.

The daemon (``Deployer.live``) and the command line (``edged functions``, ``invoke``, ``check-config``,
through ``deployed_functions``) both decide here, so they agree on what an API function is and when it
is left out (one ERROR line each, as at the daemon's start).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edged.deploy.ceilings import check_grants
from edged.deploy.modules import ModuleStore, digest_hex
from edged.deploy.registry import Registry, registry_path
from edged.errors import GrantRefused
from edged.settings import ConfigError, DeploySettings, FunctionSettings, ModelSettings, Settings

__all__ = ["deployed_functions", "merge_functions", "runnable", "settings_of"]

log = logging.getLogger(__name__)

#: The names the last merge found shadowed: the warning is logged when a name joins them, not on every
#: merge (each deploy and reload merges again).
_shadowed: set[str] = set()


def merge_functions(settings: Settings, deployed: Mapping[str, FunctionSettings]) -> Settings:
    """``settings`` running the config's functions and the deployed ones; a name in both is the config's."""
    global _shadowed  # one warning per change, for the process
    shadowed = set(deployed) & set(settings.functions)
    if shadowed - _shadowed:
        log.warning("deployed functions %s are shadowed by the config file's functions of the same name "
                    "(the config wins)", ", ".join(sorted(shadowed - _shadowed)))
    _shadowed = shadowed
    return settings.model_copy(update={"functions": {**deployed, **settings.functions}})


def settings_of(store: ModuleStore, spec: Mapping[str, Any]) -> FunctionSettings:
    """A kept version's spec as the function the pool runs (its module a file of ``store``)."""
    hexdigest = digest_hex(str(spec["module"]))
    assert hexdigest is not None  # the registry only holds accepted specs
    return FunctionSettings.model_validate({**spec, "module": store.path(hexdigest)})


def runnable(registry: Registry, store: ModuleStore, models: Mapping[str, ModelSettings],
             ceilings: DeploySettings) -> dict[str, FunctionSettings]:
    """The current version of every function in ``registry`` that can run; any other is logged and left out."""
    live: dict[str, FunctionSettings] = {}
    for name, entry in registry.functions.items():
        fn = settings_of(store, entry.running.spec)
        why = None
        if not fn.module.is_file():
            why = f"its module {entry.running.digest} is missing"
        elif missing := [m for m in fn.models if m not in models]:
            why = f"its models {missing} are not declared"
        else:
            try:
                check_grants(name, fn, ceilings)
            except GrantRefused as exc:
                why = exc.detail
        if why is not None:
            log.error("deployed function %s (version %d) is not loaded: %s", name, entry.current, why)
            continue
        live[name] = fn
    return live


def deployed_functions(settings: Settings) -> tuple[int, dict[str, FunctionSettings]]:
    """How many functions ``state_dir``'s registry holds, and those that run under ``settings`` (none while
    deploy is off). ConfigError when the registry cannot be read, as at the daemon's start."""
    if not settings.deploy.enabled:
        return 0, {}
    try:
        registry = Registry.load(registry_path(settings.state_dir))
    except ValueError as exc:
        raise ConfigError([("deploy", str(exc))]) from exc
    return len(registry.functions), runnable(registry, ModuleStore(settings.state_dir), settings.models,
                                             settings.deploy)
