"""The TFLite runtime behind one typed adapter: which package to import, and the interpreter it builds.

Two runtimes ship the same ``Interpreter`` API: ``ai_edge_litert.interpreter`` (the default; works with
numpy 1 and 2) and ``tflite_runtime.interpreter`` (tflite-runtime 2.14 is built against numpy 1, so it
needs ``numpy<2``). ``load_backend`` picks one; nothing else in edged imports either package.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "WASI_NN_TYPES",
    "Backend",
    "BackendName",
    "BackendUnavailable",
    "Interpreter",
    "InterpreterFactory",
    "TensorSpec",
    "load_backend",
]

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
