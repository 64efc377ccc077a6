"""Linking a function's imports: the ``edged`` module, and the hook through which an extension (WASI-NN)
adds its own.

Every import is defined with ``rawcall.define_i32`` (``define_func(..., access_caller=True)`` without its
per-call conversions): store-independent, so one linker serves every call on its worker thread; the call
itself is found through ``context.current()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import wasmtime

from edged.settings import FunctionSettings
from edged.wasm.host.context import CallContext
from edged.wasm.host.http import edged_http_request
from edged.wasm.host.log import edged_log
from edged.wasm.host.output import edged_output
from edged.wasm.rawcall import define_i32

__all__ = ["HostExtension", "link_edged"]

class HostExtension(Protocol):
    """Something that adds imports for some functions (the WASI-NN host implements this).

    ``link`` is called once per worker thread and function, with that thread's linker. Host functions it
    defines must never raise (``edged.wasm.host.guard``) and find their call with ``current()``; per-call
    state belongs in ``CallContext.extensions``. ``check`` runs when the module is loaded; ``end_call``
    runs on the call's thread once the guest is done (whatever happened), to release per-call state.
    """

    def link(self, linker: wasmtime.Linker, function: str, settings: FunctionSettings) -> None: ...

    def check(self, function: str, settings: FunctionSettings, module: wasmtime.Module) -> str | None:
        """Why this module must not load for this function (e.g. an import it has no grant for), or None."""
        ...

    def end_call(self, ctx: CallContext) -> None: ...


def _define(linker: wasmtime.Linker, name: str, params: int, func: Callable[..., int]) -> None:
    define_i32(linker, "edged", name, params, func)


def link_edged(linker: wasmtime.Linker) -> None:
    """Define ``edged.output``, ``edged.log`` and ``edged.http_request``; grants are checked per call."""
    _define(linker, "output", 3, edged_output)
    _define(linker, "log", 3, edged_log)
    _define(linker, "http_request", 7, edged_http_request)
