"""TFLite behind one typed adapter: models are read once at startup, interpreters are pooled per model.

Two runtimes ship the same ``Interpreter`` API: ``ai_edge_litert.interpreter`` (the default; works with
numpy 1 and 2) and ``tflite_runtime.interpreter`` (tflite-runtime 2.14 is built against numpy 1, so it
needs ``numpy<2``). ``load_backend`` picks one; nothing else in edged imports either package.

A TFLite interpreter is not thread-safe, and creating one per request is what made the original demo's
memory grow. So each model keeps a bounded pool: a call checks an interpreter out, uses it alone, and
returns it. At most ``max_interpreters`` (the number of pool workers) exist per model, and an
interpreter is never used by two threads at once. ``invoke`` releases the GIL and runs with no edged
lock held: the pool's lock only guards checkout and return.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

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

BackendName = Literal["auto", "litert", "tflite"]

#: numpy dtype -> WASI-NN tensor type, as wasmtime and WasmEdge number them today.
WASI_NN_TYPES: dict[np.dtype[Any], int] = {
    np.dtype(np.float16): 0,
    np.dtype(np.float32): 1,
    np.dtype(np.float64): 2,
    np.dtype(np.uint8): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
}

#: backend name -> (module, pip distribution)
_MODULES = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite": ("tflite_runtime.interpreter", "tflite-runtime"),
}


class Interpreter(Protocol):
    """The part of ``tf.lite.Interpreter`` edged uses (both runtimes provide it)."""

    def allocate_tensors(self) -> None: ...

    def get_input_details(self) -> list[dict[str, Any]]: ...

    def get_output_details(self) -> list[dict[str, Any]]: ...

    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...

    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...

    def invoke(self) -> None: ...


class InterpreterFactory(Protocol):
    def __call__(self, *, model_content: bytes, num_threads: int) -> Interpreter: ...


class BackendUnavailable(RuntimeError):
    """No usable TFLite runtime is installed; the message names the pip package to install."""


class ModelError(RuntimeError):
    """A model could not be loaded (unreadable file, not a TFLite flatbuffer, unsupported tensors)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """A TFLite runtime: which package, which version, and how to build an interpreter."""

    name: str
    package: str
    version: str
    factory: InterpreterFactory


def _import_backend(name: str) -> Backend:
    module_name, package = _MODULES[name]
    if name == "tflite" and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        raise BackendUnavailable(
            f"tflite-runtime is built against numpy 1 and numpy {np.__version__} is installed: "
            "pip install 'numpy<2', or pip install ai-edge-litert and use nn_backend = \"litert\"")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"{module_name} is not importable ({exc}): pip install {package}") from exc
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = "unknown"
    factory = cast(InterpreterFactory, module.Interpreter)
    return Backend(name=name, package=package, version=version, factory=factory)


def load_backend(name: BackendName = "auto") -> Backend:
    """Import the TFLite runtime ``name``; ``auto`` prefers ai-edge-litert, then tflite-runtime."""
    if name != "auto":
        return _import_backend(name)
    problems: list[str] = []
    for candidate in ("litert", "tflite"):
        try:
            return _import_backend(candidate)
        except BackendUnavailable as exc:
            problems.append(str(exc))
    raise BackendUnavailable(
        "no TFLite runtime is installed: pip install ai-edge-litert (or tflite-runtime with numpy<2); "
        + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output tensor of a model, as the interpreter reports it."""

    index: int
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def wasi_nn_type(self) -> int | None:
        """The WASI-NN tensor type of this tensor, or None when WASI-NN cannot express it."""
        return WASI_NN_TYPES.get(self.dtype)

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> TensorSpec:
        return cls(index=int(details["index"]), name=str(details["name"]), dtype=np.dtype(details["dtype"]),
                   shape=tuple(int(d) for d in details["shape"]))


class Lease:
    """One interpreter checked out by one thread for one call. Use it from that thread only."""

    __slots__ = ("_interpreter", "_released", "broken", "model")

    def __init__(self, model: Model, interpreter: Interpreter) -> None:
        self.model = model
        self._interpreter: Interpreter | None = interpreter
        self._released = False
        #: Set when the interpreter failed; a broken one is dropped instead of going back to the pool.
        self.broken = False

    def _get(self) -> Interpreter:
        if self._interpreter is None:
            raise RuntimeError("lease already released")
        return self._interpreter

    def set_input(self, position: int, value: npt.NDArray[Any]) -> None:
        """Copy ``value`` into input ``position`` (its dtype and shape must match the model's)."""
        spec = self.model.inputs[position]
        if value.dtype != spec.dtype or value.shape != spec.shape:
            raise ValueError(f"input {position} is {spec.dtype.name}{list(spec.shape)}, "
                             f"not {value.dtype.name}{list(value.shape)}")
        self._get().set_tensor(spec.index, value)

    def invoke(self) -> None:
        """Run the model; the runtime releases the GIL while it computes."""
        try:
            self._get().invoke()
        except BaseException:
            self.broken = True
            raise

    def output(self, position: int) -> npt.NDArray[Any]:
        """A copy of output ``position``."""
        return self._get().get_tensor(self.model.outputs[position].index)

    def release(self) -> None:
        """Give the interpreter back (or drop it when broken). Calling it twice is harmless."""
        if self._released:
            return
        self._released = True
        interpreter, self._interpreter = self._interpreter, None
        if interpreter is not None:
            self.model._give_back(interpreter, broken=self.broken)


class Model:
    """A model read once: its bytes, labels, tensors and a bounded pool of interpreters.

    With ``lazy`` (declared models), interpreters are allocated on first use: an idle daemon holds one
    built interpreter per model, not its tensor arena and packed weights.
    """

    def __init__(self, name: str, content: bytes, *, backend: Backend, threads: int = 1,
                 labels: tuple[str, ...] | None = None, max_interpreters: int = 1, lazy: bool = True) -> None:
        if max_interpreters < 1:
            raise ValueError("max_interpreters must be at least 1")
        self.name = name
        self.threads = threads
        self.labels = labels
        #: The labels as functions receive them (edged.model_labels): UTF-8, one per line, made once.
        self.labels_text = "\n".join(labels).encode("utf-8") if labels is not None else None
        self.max_interpreters = max_interpreters
        self._content = content
        self._backend = backend
        self._cond = threading.Condition()
        self._idle: list[Interpreter] = []
        self._in_use = 0
        self._live = 0
        self._closed = False
        #: Interpreters ever created for this model (the "loaded once" counter).
        self.created = 0
        # A probe validates the model now, at startup, rather than on the first request: built and
        # allocated like every interpreter (same bytes, same runtime: a later one cannot fail differently
        # short of running out of memory), then dropped. Allocation (tensor arena, weights packed by the
        # XNNPACK delegate: ~25 MB for EfficientNet-Lite0) is what an idle daemon need not hold.
        # Without ``lazy`` (a one-call model) the probe is the interpreter.
        probe = self._build(allocate=True)
        self.inputs = tuple(TensorSpec.from_details(d) for d in probe.get_input_details())
        self.outputs = tuple(TensorSpec.from_details(d) for d in probe.get_output_details())
        #: Built but not allocated (~1.5 MB each): the first call that takes one allocates it.
        self._unallocated: list[Interpreter] = []
        if lazy:
            del probe
            self._unallocated.append(self._create(allocate=False))
        else:
            self.created = 1
            self._idle.append(probe)
        self._live = 1

    @property
    def size(self) -> int:
        return len(self._content)

    def _build(self, *, allocate: bool) -> Interpreter:
        try:
            interpreter = self._backend.factory(model_content=self._content, num_threads=self.threads)
            if allocate:
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {self.name!r}: {exc}") from exc
        return interpreter

    def _create(self, *, allocate: bool = True) -> Interpreter:
        interpreter = self._build(allocate=allocate)
        with self._cond:
            self.created += 1
        return interpreter

    def _allocate(self, interpreter: Interpreter) -> Interpreter:
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {self.name!r}: {exc}") from exc
        return interpreter

    def checkout(self, timeout: float) -> Lease | None:
        """Take an interpreter for one call; None when all are busy for ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(self._available, timeout):
                return None
            if self._closed:
                raise ModelError(f"model {self.name!r} is closed")
            if self._idle:
                interpreter = self._idle.pop()
                self._in_use += 1
                return Lease(self, interpreter)
            # Reserve the slot, then build or allocate outside the lock: that takes milliseconds.
            unallocated = self._unallocated.pop() if self._unallocated else None
            if unallocated is None:
                self._live += 1
            self._in_use += 1
        try:
            interpreter = self._create() if unallocated is None else self._allocate(unallocated)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._in_use -= 1
                self._cond.notify()
            raise
        return Lease(self, interpreter)

    def _available(self) -> bool:
        return bool(self._idle) or bool(self._unallocated) or self._live < self.max_interpreters

    def _give_back(self, interpreter: Interpreter, *, broken: bool) -> None:
        with self._cond:
            self._in_use -= 1
            if broken or self._closed:
                self._live -= 1
                if broken:
                    log.warning("model %s: dropping an interpreter that failed", self.name)
            else:
                self._idle.append(interpreter)
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"created": self.created, "live": self._live, "idle": len(self._idle) + len(self._unallocated),
                    "in_use": self._in_use, "max": self.max_interpreters}

    def close(self) -> None:
        """Drop the idle interpreters (leased ones go when their lease is released)."""
        with self._cond:
            self._closed = True
            self._live -= len(self._idle) + len(self._unallocated)
            self._idle.clear()
            self._unallocated.clear()
            self._cond.notify_all()


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
                              max_interpreters=self._max_interpreters)
            except ModelError as exc:
                raise ConfigError([(f"models.{name}.path", f"{settings.path}: {exc}")]) from exc
            classes = model.outputs[0].shape[-1] if model.outputs and model.outputs[0].shape else None
            if labels is not None and classes is not None and classes != len(labels):
                log.warning("model %s: %d labels for %d output classes", name, len(labels), classes)
            log.info("model %s loaded: %s (%d bytes, %d threads) on %s %s", name, settings.path, model.size,
                     settings.threads, runtime.package, runtime.version)
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
