"""Checks of a valid config against the machine: what ``check-config`` reports and ``run`` refuses to start on.

``file_problems`` is cheap (files exist, secrets readable as the daemon reads them, ``$CREDENTIALS_DIRECTORY``
first); ``load_problems`` does what startup does with each model and module: loads the model into the
TFLite runtime, compiles and validates the module through the real pool, so a garbage ``.wasm`` or
``.tflite`` fails here and not at the first call. Each problem is ``(setting, message)``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edged.inference.tflite import ModelRegistry
from edged.secrets import SecretError, read_secret
from edged.settings import ConfigError, Settings
from edged.wasm.build import build_pool

__all__ = ["Problem", "file_problems", "load_problems"]

Problem = tuple[str, str]


def file_problems(settings: Settings) -> list[Problem]:
    """Modules, models, labels and preopened directories exist; every configured secret is readable."""
    problems: list[Problem] = []
    for name, fn in settings.functions.items():
        if not fn.module.is_file():
            problems.append((f"functions.{name}.module", f"no such file: {fn.module}"))
        for i, pre in enumerate(fn.preopens):
            if not pre.host.is_dir():
                problems.append((f"functions.{name}.preopens.{i}.host", f"no such directory: {pre.host}"))
    for name, model in settings.models.items():
        if not model.path.is_file():
            problems.append((f"models.{name}.path", f"no such file: {model.path}"))
        if model.labels is not None and not model.labels.is_file():
            problems.append((f"models.{name}.labels", f"no such file: {model.labels}"))
    secrets = {"http.token_file": settings.http.token_file,
               "mqtt.password_file": settings.mqtt.password_file if settings.mqtt.enabled else None,
               "dapr.token_file": settings.dapr.token_file if settings.dapr.enabled else None}
    for key, path in secrets.items():
        if path is not None:
            try:
                read_secret(key, path)  # read as the daemon will, then forgotten
            except SecretError as exc:
                problems.append((key, "; ".join(f"{place}: {why}" for place, why in exc.tried)))
    return problems


def load_problems(settings: Settings) -> list[Problem]:
    """Load every model and compile and validate every function's module, each on its own, so every bad
    one is reported. Compiled modules go to a throwaway cache: checking never writes the daemon's state."""
    found: dict[str, str] = {}
    for name, model in settings.models.items():
        try:
            with ModelRegistry({name: model}, backend=settings.nn_backend):
                pass
        except ConfigError as exc:
            found.update(exc.problems)
    with tempfile.TemporaryDirectory(prefix="edged-check-") as scratch:
        trial = settings.model_copy(update={"state_dir": Path(scratch)})
        for name, fn in settings.functions.items():
            if any(key.startswith(f"models.{m}.") for m in fn.models for key in found):
                continue  # its model is already reported; the function cannot load without it
            models, pool = build_pool(trial, only=name)
            try:
                with models, pool:
                    pass
            except ConfigError as exc:
                found.update(exc.problems)
    return list(found.items())
