"""``edged.model_name`` and ``edged.model_labels``: what a function may learn about the models it is granted.

Both are linked with ``wasi_ephemeral_nn`` (only for functions with a ``models`` grant) by the WASI-NN
host. They answer from the model declarations read at startup, so a call needs no file access to find
its model and class names (a preopen would cost three WASI file operations per call, each a round trip
to wasmtime's I/O threads).

- ``model_name(index, buf, cap, len_out) -> errno``: the name at ``index`` in the function's ``models``
  grant, in config order.
- ``model_labels(name_ptr, name_len, buf, cap, len_out) -> errno``: the declared labels of a granted
  model as UTF-8 text, one label per line, no trailing newline.

Errnos (docs/ABI.md): ``not_found`` (8) for an index past the grant, a name outside it (the same answer
whether or not such a model is declared) or a granted model declared without labels; ``too_large`` (7)
when the text does not fit in ``cap`` bytes, with the needed length stored at ``len_out`` and nothing
else written; ``invalid_argument`` (1) for pointers outside the memory or a name that is not UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable

import wasmtime

from edged.inference.tflite import ModelRegistry
from edged.wasm.abi import Errno
from edged.wasm.host.context import guest_memory
from edged.wasm.host.guard import EDGED_ERRNOS, host_function
from edged.wasm.memory import GuestMemory, u32

__all__ = ["IMPORTS", "model_imports"]

#: Import name -> number of i32 parameters.
IMPORTS = {"model_name": 4, "model_labels": 5}
_MAX_NAME = 256


def _deliver(memory: GuestMemory, data: bytes, buf: int, cap: int, len_out: int) -> Errno:
    """Write ``data`` and its length, or only the length (``too_large``) when it does not fit."""
    memory.check(len_out, 4)
    if len(data) > cap:
        memory.write_u32(len_out, len(data))
        return Errno.TOO_LARGE
    memory.write(buf, data)
    memory.write_u32(len_out, len(data))
    return Errno.OK


def model_imports(registry: ModelRegistry, granted: tuple[str, ...]) -> dict[str, Callable[..., int]]:
    """The two host functions for one function's grant (``granted``: its ``models``, in config order)."""
    allowed = frozenset(granted)

    # Pointers outside the memory: the guard answers invalid_argument.
    @host_function("edged.model_name", EDGED_ERRNOS)
    def model_name(caller: wasmtime.Caller, index: int, buf: int, cap: int, len_out: int) -> int:
        memory = guest_memory(caller)
        if memory is None:
            return Errno.INVALID_ARGUMENT
        index = u32(index)
        if index >= len(granted):
            return Errno.NOT_FOUND
        return _deliver(memory, granted[index].encode("utf-8"), u32(buf), u32(cap), u32(len_out))

    @host_function("edged.model_labels", EDGED_ERRNOS)
    def model_labels(caller: wasmtime.Caller, name_ptr: int, name_len: int, buf: int, cap: int,
                     len_out: int) -> int:
        memory = guest_memory(caller)
        name_len = u32(name_len)
        if memory is None or name_len > _MAX_NAME:
            return Errno.INVALID_ARGUMENT
        try:
            name = memory.read(u32(name_ptr), name_len).decode("utf-8")
        except UnicodeDecodeError:
            return Errno.INVALID_ARGUMENT
        model = registry.get(name) if name in allowed else None
        if model is None or model.labels_text is None:
            return Errno.NOT_FOUND
        return _deliver(memory, model.labels_text, u32(buf), u32(cap), u32(len_out))

    return {"model_name": model_name, "model_labels": model_labels}
