"""Daemon configs for tests and benchmarks, built as data and written as TOML in one place.

``daemon_config(state_dir, **tables)`` starts from a config that needs nothing outside the machine (HTTP
on a free loopback port, no broker, no sidecar) and merges the given tables over it, key by key;
``write_config(path, config)`` writes any such dict as TOML.

``PRELOAD_MODELS`` (``TESTS_PRELOAD_MODELS=1``, set by cross/emulated_test.sh): under qemu allocating an
interpreter takes seconds, so a model allocated by its first call would spend that call's timeout; there
every model in a ``daemon_config`` is preloaded (``[models.NAME] preload``) unless the test says otherwise.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PRELOAD_MODELS", "daemon_config", "merge", "toml_text", "write_config"]

PRELOAD_MODELS = os.environ.get("TESTS_PRELOAD_MODELS") == "1"


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: tables merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def daemon_config(state_dir: Path, **tables: Any) -> dict[str, Any]:
    """A self-contained daemon config with ``tables`` merged over it."""
    base: dict[str, Any] = {
        "state_dir": state_dir,
        "device_id": "test-gw",
        "log_level": "INFO",
        "http": {"host": "127.0.0.1", "port": 0},
        "mqtt": {"enabled": False},
        "dapr": {"enabled": False},
        "pool": {"workers": 2, "queue": 8},
    }
    config = merge(base, tables)
    if PRELOAD_MODELS and isinstance(config.get("models"), Mapping):
        config["models"] = {name: {"preload": True, **model} for name, model in config["models"].items()}
    return config


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no {value}")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _table(lines: list[str], name: str, table: Mapping[str, Any]) -> None:
    subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    plain = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    if name and (plain or not subtables):
        lines.append(f"[{name}]")
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in plain.items())
    for key, sub in subtables.items():
        _table(lines, f"{name}.{_key(key)}" if name else _key(key), sub)


def toml_text(config: Mapping[str, Any]) -> str:
    """``config`` as TOML: scalars, arrays and inline tables in arrays; nested mappings become tables."""
    lines: list[str] = []
    _table(lines, "", config)
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(toml_text(config))
    return path
