"""TFLite for WASI-NN: the registry of declared models, read once at startup and shared by every call.

The parts live beside it: ``edged.inference.runtime`` imports the TFLite runtime (the only place that
does) and ``edged.inference.interpreters`` pools each model's interpreters. Their public names are
re-exported here, so ``edged.inference.tflite`` stays the one import for the rest of edged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping

from edged.inference.interpreters import Lease, Model, ModelError
from edged.inference.runtime import (
    WASI_NN_TYPES,
    Backend,
    BackendName,
    BackendUnavailable,
    Interpreter,
    InterpreterFactory,
    TensorSpec,
    load_backend,
)
from edged.settings import ConfigError, ModelSettings

__all__ = [
    "WASI_NN_TYPES",
    "Backend",
    "BackendName",
    "BackendUnavailable",
    "Interpreter",
    "InterpreterFactory",
    "Lease",
    "Model",
    "ModelError",
    "ModelRegistry",
    "TensorSpec",
    "load_backend",
]

log = logging.getLogger(__name__)


def _read_labels(name: str, settings: ModelSettings) -> tuple[str, ...] | None:
    if settings.labels is None:
        return None
    try:
        text = settings.labels.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(f"models.{name}.labels", f"cannot read {settings.labels}: {exc}")]) from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class ModelRegistry:
    """Every declared model, loaded once at startup; the WASI-NN host borrows interpreters from here.

    Cheap to construct; ``load()`` (or entering it, sync or async) reads the files and builds one
    interpreter per model, so a bad model stops startup instead of failing the first request.
    """

    def __init__(self, models: Mapping[str, ModelSettings] | None = None, *, backend: BackendName = "auto",
                 max_interpreters: int = 1) -> None:
        self._settings = dict(models or {})
        self._backend_name = backend
        self._max_interpreters = max_interpreters
        self._backend: Backend | None = None
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read every model and labels file once and validate each model with one interpreter.

        Without declared models no runtime is imported, so edged runs where TFLite is not installed.
        Raises ConfigError naming the setting at fault (``nn_backend`` or ``models.NAME.*``).
        """
        if not self._settings or self._models:
            return
        try:
            runtime = self.backend()
        except BackendUnavailable as exc:
            raise ConfigError([("nn_backend", str(exc))]) from exc
        loaded: dict[str, Model] = {}
        for name, settings in self._settings.items():
            try:
                content = settings.path.read_bytes()
            except OSError as exc:
                raise ConfigError([(f"models.{name}.path", f"cannot read {settings.path}: {exc.strerror}")]) from exc
            labels = _read_labels(name, settings)
            try:
                model = Model(name, content, backend=runtime, threads=settings.threads, labels=labels,
                              max_interpreters=self._max_interpreters, lazy=not settings.preload)
            except ModelError as exc:
                raise ConfigError([(f"models.{name}.path", f"{settings.path}: {exc}")]) from exc
            classes = model.outputs[0].shape[-1] if model.outputs and model.outputs[0].shape else None
            if labels is not None and classes is not None and classes != len(labels):
                log.warning("model %s: %d labels for %d output classes", name, len(labels), classes)
            log.info("model %s loaded: %s (%d bytes, %d threads, %s) on %s %s", name, settings.path, model.size,
                     settings.threads, "preloaded" if settings.preload else "allocated on first use",
                     runtime.package, runtime.version)
            loaded[name] = model
        self._models = loaded

    def __enter__(self) -> ModelRegistry:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ModelRegistry:
        await asyncio.to_thread(self.load)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def get(self, name: str) -> Model | None:
        return self._models.get(name)

    def backend(self) -> Backend:
        """The runtime, imported on first use when no model was declared."""
        with self._lock:
            if self._backend is None:
                self._backend = load_backend(self._backend_name)
            return self._backend

    def load_bytes(self, content: bytes, *, threads: int = 1) -> Model:
        """A one-call model from guest-supplied bytes (only with ``allow_model_bytes``); never pooled."""
        return Model("(guest bytes)", content, backend=self.backend(), threads=threads, max_interpreters=1,
                     lazy=False)

    def close(self) -> None:
        """Drop the idle interpreters; the registry is empty afterwards."""
        for model in self._models.values():
            model.close()
        self._models = {}
