"""What a reload may change, and the checks a new config passes before anything is swapped.

``read_checked`` loads the file again (with the environment, as at start) and validates it as
``check-config`` does (edged.preflight: files, secrets, every model and module loaded). ``restart_needed``
names the settings that differ but only take effect at start; ``reloadable`` is the running config with
what a reload does change (functions, models, MQTT subscriptions) taken from the new one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edged.preflight import file_problems, load_problems
from edged.settings import ConfigError, Settings, load_settings

__all__ = ["RELOADED", "read_checked", "reloadable", "restart_needed"]

#: Dotted keys a reload applies; every other difference needs a restart.
RELOADED = ("functions", "models", "mqtt.subscriptions")
_SECRET_WORDS = ("token", "password")


def read_checked(path: Path | None) -> Settings:
    """The config at ``path``, fully validated; ConfigError with every problem found."""
    settings = load_settings(path)
    problems = file_problems(settings) or load_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in RELOADED:
            continue
        if isinstance(value, Mapping):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def restart_needed(running: Settings, new: Settings) -> list[str]:
    """One line per setting that differs and is kept at its running value until a restart."""
    old = dict(_leaves(running.model_dump(mode="json")))
    lines = []
    for key, value in _leaves(new.model_dump(mode="json")):
        if old.get(key) != value:
            if any(word in key for word in _SECRET_WORDS):
                lines.append(f"{key} changed: needs a restart (the running value is kept)")
            else:
                lines.append(f"{key} changed from {old.get(key)!r} to {value!r}: needs a restart "
                             f"(the running value is kept)")
    return lines


def reloadable(running: Settings, new: Settings) -> Settings:
    """``running`` with the functions, models and MQTT subscriptions of ``new``."""
    mqtt = running.mqtt.model_copy(update={"subscriptions": new.mqtt.subscriptions})
    return running.model_copy(update={"functions": new.functions, "models": new.models, "mqtt": mqtt})
