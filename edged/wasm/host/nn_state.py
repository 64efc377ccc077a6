"""WASI-NN preview1's numbers and one call's state: errnos, limits, tensor layouts, grants, handles.

``edged.wasm.host.nn`` implements the imports (and documents the policy) on top of these.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from edged.inference.tflite import WASI_NN_TYPES, Lease, Model
from edged.settings import FunctionSettings
from edged.wasm.host.guard import Errnos

__all__ = [
    "BUILDER",
    "DTYPES",
    "ENCODING_TFLITE",
    "ERRNOS",
    "EXTENSION",
    "MAX_CONTEXTS",
    "MAX_GRAPHS",
    "MAX_GUEST_MODELS",
    "MAX_NAME",
    "MAX_RANK",
    "MODULE",
    "REFUSALS",
    "TARGETS",
    "TARGET_CPU",
    "TENSOR",
    "NnCall",
    "NnContext",
    "NnErrno",
    "NnGrant",
    "errno_name",
]

MODULE = "wasi_ephemeral_nn"
#: Key of the per-call state in ``CallContext.extensions``.
EXTENSION = "wasi_nn"
ENCODING_TFLITE = 4
TARGET_CPU, TARGETS = 0, (0, 1, 2)
MAX_GRAPHS = 4
MAX_CONTEXTS = 4
#: Guest-supplied model bytes per call (``load`` with ``allow_model_bytes``).
MAX_GUEST_MODELS = 1
MAX_RANK = 8
MAX_NAME = 256
TENSOR = struct.Struct("<IIBxxxII")
BUILDER = struct.Struct("<II")
DTYPES = {code: dtype for dtype, code in WASI_NN_TYPES.items()}


class NnErrno(enum.IntEnum):
    """The preview1 ``nn_errno`` values."""

    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8


#: Errnos that mean "not granted": logged at WARNING (once per call), the rest at DEBUG.
REFUSALS = frozenset({NnErrno.NOT_FOUND, NnErrno.UNSUPPORTED_OPERATION})
#: What the guard answers: a pointer outside guest memory, and anything unexpected in the host.
ERRNOS = Errnos(invalid_argument=NnErrno.INVALID_ARGUMENT, unexpected=NnErrno.RUNTIME_ERROR)


def errno_name(errno: int) -> str:
    try:
        return NnErrno(errno).name
    except ValueError:
        return str(errno)


@dataclass(frozen=True, slots=True)
class NnGrant:
    """What one function may load."""

    function: str
    models: frozenset[str]
    allow_model_bytes: bool

    @classmethod
    def of(cls, name: str, fn: FunctionSettings) -> NnGrant:
        return cls(name, frozenset(fn.models), fn.allow_model_bytes)


@dataclass(slots=True)
class NnContext:
    """One execution context: its model, the interpreter it borrowed, and what has been set."""

    model: Model
    lease: Lease
    inputs_set: set[int] = field(default_factory=set)
    computed: bool = False


@dataclass(slots=True)
class NnCall:
    """One call's WASI-NN state: handles to graphs and execution contexts, released by ``close``."""

    #: The call's deadline (time.monotonic()); host code is not interrupted by epochs, so waits honour it.
    deadline: float = float("inf")
    graphs: list[Model] = field(default_factory=list)
    contexts: list[NnContext] = field(default_factory=list)
    #: Models built from guest bytes in this call; dropped with it.
    owned: list[Model] = field(default_factory=list)
    #: The last errno's reason, for the call's failure detail and tests.
    last_error: str | None = None
    #: Refusals are logged at WARNING once per call (a guest could otherwise flood the log).
    warned: bool = False

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.lease.release()
        for model in self.owned:
            model.close()
        self.contexts.clear()
        self.graphs.clear()
        self.owned.clear()
