"""WASI-NN preview1 (``wasi_ephemeral_nn``) on TFLite: inference runs natively, behind the standard API.

Memory layouts and numbering follow the preview1 witx as wasmtime and WasmEdge implement it today:
every parameter and result is an i32 and every import returns an errno. A tensor is 20 bytes:
``dims_ptr@0 dims_len@4 type@8 (one byte; the 3 padding bytes are ignored) data_ptr@12 data_len@16``.
Graph encoding ``tensorflowlite`` is 4; tensor types f16 0, f32 1, f64 2, u8 3, i32 4, i64 5.

Policy (docs/ABI.md, "WASI-NN"):

- Linking: the module is linked only for functions whose grant has ``models`` or ``allow_model_bytes``,
  together with ``edged.model_name`` and ``edged.model_labels`` (``edged.wasm.host.models``).
  A function without either that imports any of them is refused when its module is loaded (``check_module``),
  with a message naming the missing grant; so an ungranted function never reaches a model.
- ``load_by_name`` answers ``not_found`` for every name outside the function's ``models`` grant, declared
  or not, so a guest cannot probe which models exist. Declared models are read once at startup and shared
  read-only; a call borrows an interpreter and gives it back when the call ends.
- ``load`` (model bytes from the guest) is ``unsupported_operation`` unless ``allow_model_bytes``:
  a model parsed by the host is host attack surface. Encodings other than tensorflowlite are
  ``invalid_encoding``; target gpu/tpu is ``unsupported_operation`` and a value outside the enum
  ``invalid_argument``.
- ``set_input`` checks the index, rank, dims, type and byte size against the model's input:
  any mismatch (u8 data for a float model, too few bytes, ...) is ``invalid_argument``.
  ``compute`` before every input is set, and ``get_output`` before ``compute``, are ``invalid_argument``.
- ``get_output`` into a buffer smaller than the tensor is ``too_large`` (as wasmtime answers it). TFLite
  failing on a guest-supplied model (set_input, invoke, output) is ``runtime_error``, never a traceback.
- One call holds at most one execution context per graph's model (a second is ``busy``), so N workers
  never need more than N interpreters per model. Per call at most ``MAX_GRAPHS`` graphs and
  ``MAX_CONTEXTS`` contexts (``busy`` beyond).
- Every pointer and length is bounds-checked (``invalid_argument``); no exported memory is
  ``missing_memory``; the unexpected is ``runtime_error``: nothing raises across the Wasm boundary.

``NnHost`` is the pool's host extension (``edged.wasm.host.link.HostExtension``): ``link`` defines the
imports on a function's linker, ``check`` refuses an ungranted module at load time, and per-call state
(graph and context handles) lives in the call's ``CallContext.extensions`` until ``end_call`` returns
the interpreters it borrowed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import wasmtime

from edged.inference.tflite import Model, ModelError, ModelRegistry
from edged.settings import FunctionSettings
from edged.wasm.host import models, nn_state
from edged.wasm.host.context import CallContext, current
from edged.wasm.host.guard import Refused, host_function
from edged.wasm.host.nn_state import NnCall, NnContext, NnErrno, NnGrant
from edged.wasm.memory import GuestMemory, u32
from edged.wasm.rawcall import define_i32

__all__ = ["NnHost"]

log = logging.getLogger(__name__)


class NnHost:
    """The WASI-NN host over a ModelRegistry: the function pool's host extension."""

    def __init__(self, registry: ModelRegistry, *, checkout_timeout: float = 5.0,
                 max_model_bytes: int = 256 * 1024 * 1024) -> None:
        self.registry = registry
        self.checkout_timeout = checkout_timeout
        self.max_model_bytes = max_model_bytes

    # -- the pool's hooks ----------------------------------------------------------------------------

    @staticmethod
    def granted(settings: FunctionSettings) -> bool:
        """Whether ``wasi_ephemeral_nn`` is linked for this function."""
        return bool(settings.models) or settings.allow_model_bytes

    def check(self, function: str, settings: FunctionSettings, module: wasmtime.Module) -> str | None:
        """Why the module cannot load (it imports WASI-NN without a grant), or None."""
        if self.granted(settings):
            return None
        wanted = sorted({f"{imp.module}.{imp.name}" for imp in module.imports
                         if imp.module == nn_state.MODULE or (imp.module == "edged" and imp.name in models.IMPORTS)})
        if not wanted:
            return None
        return (f"the module imports {', '.join(wanted)} but the function may load no model: "
                f"grant one with models = [...] in [functions.{function}]")

    def link(self, linker: wasmtime.Linker, function: str, settings: FunctionSettings) -> None:
        """Define the six imports on this function's linker, bound to its grant; nothing without a grant."""
        if not self.granted(settings):
            return
        grant = NnGrant.of(function, settings)
        imports: dict[str, tuple[int, Callable[..., NnErrno]]] = {
            "load": (5, self._load),
            "load_by_name": (3, self._load_by_name),
            "init_execution_context": (2, self._init_execution_context),
            "set_input": (3, self._set_input),
            "compute": (1, self._compute),
            "get_output": (5, self._get_output),
        }
        for import_name, (params, impl) in imports.items():
            define_i32(linker, nn_state.MODULE, import_name, params, self._guarded(import_name, grant, impl))
        # The model declarations, so a function needs no file access to find its model and labels.
        for import_name, host in models.model_imports(self.registry, tuple(settings.models)).items():
            define_i32(linker, "edged", import_name, models.IMPORTS[import_name], host)

    def end_call(self, ctx: CallContext) -> None:
        """The call is over: give back its interpreters and drop its graphs (on the call's thread)."""
        state = ctx.extensions.pop(nn_state.EXTENSION, None)
        if isinstance(state, NnCall):
            state.close()

    @staticmethod
    def state(ctx: CallContext) -> NnCall:
        """The call's WASI-NN state, created on its first import."""
        state = ctx.extensions.get(nn_state.EXTENSION)
        if not isinstance(state, NnCall):
            state = NnCall(deadline=ctx.deadline)
            ctx.extensions[nn_state.EXTENSION] = state
        return state

    # -- the boundary ----------------------------------------------------------------------------------

    def _guarded(self, import_name: str, grant: NnGrant,
                 impl: Callable[..., NnErrno]) -> Callable[..., int]:
        def report(_name: str, errno: int, detail: str) -> None:
            ctx = current()
            call = ctx.extensions.get(nn_state.EXTENSION) if ctx is not None else None
            level = logging.DEBUG
            if isinstance(call, NnCall):
                call.last_error = f"{import_name}: {detail}"
                if errno in nn_state.REFUSALS and not call.warned:
                    call.warned, level = True, logging.WARNING
            log.log(level, "%s: %s.%s -> %s: %s", grant.function, nn_state.MODULE, import_name,
                    nn_state.errno_name(errno), detail, extra={"FUNCTION": grant.function})

        @host_function(f"{nn_state.MODULE}.{import_name}", nn_state.ERRNOS, report)
        def host(caller: wasmtime.Caller, *args: int) -> int:
            ctx = current()
            if ctx is None:
                raise Refused(NnErrno.RUNTIME_ERROR, "no call in progress on this thread")
            call = self.state(ctx)
            memory = ctx.guest_memory(caller)
            if memory is None:
                raise Refused(NnErrno.MISSING_MEMORY, "the module exports no memory named 'memory'")
            return impl(call, grant, memory, *(u32(a) for a in args))

        return host

    # -- the imports -------------------------------------------------------------------------------------

    @staticmethod
    def _add_graph(call: NnCall, model: Model) -> int:
        if len(call.graphs) >= nn_state.MAX_GRAPHS:
            raise Refused(NnErrno.BUSY, f"a call may hold at most {nn_state.MAX_GRAPHS} graphs")
        call.graphs.append(model)
        return len(call.graphs) - 1

    def _load(self, call: NnCall, grant: NnGrant, mem: GuestMemory, builders_ptr: int, builders_len: int,
              encoding: int, target: int, graph_out: int) -> NnErrno:
        if not grant.allow_model_bytes:
            raise Refused(NnErrno.UNSUPPORTED_OPERATION,
                        "loading model bytes from the guest is not granted (allow_model_bytes)")
        if encoding != nn_state.ENCODING_TFLITE:
            raise Refused(NnErrno.INVALID_ENCODING, f"encoding {encoding}: only tensorflowlite (4) is available")
        if target not in nn_state.TARGETS:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"execution target {target} is not cpu, gpu or tpu")
        if target != nn_state.TARGET_CPU:
            raise Refused(NnErrno.UNSUPPORTED_OPERATION, f"execution target {target}: only cpu (0) is available")
        if builders_len != 1:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"a TFLite graph is one builder, not {builders_len}")
        if len(call.owned) >= nn_state.MAX_GUEST_MODELS:
            raise Refused(NnErrno.BUSY, f"at most {nn_state.MAX_GUEST_MODELS} guest-supplied model(s) per call")
        mem.view(graph_out, 4, "graph_out")
        data_ptr, data_len = nn_state.BUILDER.unpack(mem.view(builders_ptr, nn_state.BUILDER.size, "builder array"))
        if data_len > self.max_model_bytes:
            raise Refused(NnErrno.TOO_LARGE, f"model of {data_len} bytes is over {self.max_model_bytes}")
        content = bytes(mem.view(data_ptr, data_len, "model bytes"))
        try:
            model = self.registry.load_bytes(content)
        # TFLite reads a corrupt model's tensor names with UTF-8 (UnicodeDecodeError), past ModelError.
        except (ModelError, ValueError, RuntimeError) as exc:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"not a usable TFLite model: {exc}") from exc
        call.owned.append(model)
        mem.write_u32(graph_out, self._add_graph(call, model), "graph_out")
        return NnErrno.SUCCESS

    def _load_by_name(self, call: NnCall, grant: NnGrant, mem: GuestMemory, name_ptr: int, name_len: int,
                      graph_out: int) -> NnErrno:
        if name_len > nn_state.MAX_NAME:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"model name of {name_len} bytes")
        mem.view(graph_out, 4, "graph_out")
        try:
            name = bytes(mem.view(name_ptr, name_len, "model name")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(NnErrno.INVALID_ARGUMENT, "model name is not UTF-8") from exc
        model = self.registry.get(name) if name in grant.models else None
        if model is None:
            # The same answer for "not declared" and "not granted": existence is not disclosed.
            raise Refused(NnErrno.NOT_FOUND, f"model {name!r} is not granted to this function")
        mem.write_u32(graph_out, self._add_graph(call, model), "graph_out")
        return NnErrno.SUCCESS

    def _init_execution_context(self, call: NnCall, grant: NnGrant, mem: GuestMemory, graph: int,
                                ctx_out: int) -> NnErrno:
        if graph >= len(call.graphs):
            raise Refused(NnErrno.INVALID_ARGUMENT, f"no graph {graph}")
        mem.view(ctx_out, 4, "context_out")
        model = call.graphs[graph]
        if any(ctx.model is model for ctx in call.contexts):
            raise Refused(NnErrno.BUSY, f"this call already has an execution context for model {model.name!r}")
        if len(call.contexts) >= nn_state.MAX_CONTEXTS:
            raise Refused(NnErrno.BUSY, f"a call may hold at most {nn_state.MAX_CONTEXTS} execution contexts")
        timeout = max(0.0, min(self.checkout_timeout, call.deadline - time.monotonic()))
        try:
            lease = model.checkout(timeout)
        except ModelError as exc:
            raise Refused(NnErrno.RUNTIME_ERROR, str(exc)) from exc
        if lease is None:
            raise Refused(NnErrno.BUSY, f"no interpreter of {model.name!r} free within {timeout:.3f} s")
        call.contexts.append(NnContext(model, lease))
        mem.write_u32(ctx_out, len(call.contexts) - 1, "context_out")
        return NnErrno.SUCCESS

    @staticmethod
    def _context(call: NnCall, ctx: int) -> NnContext:
        if ctx >= len(call.contexts):
            raise Refused(NnErrno.INVALID_ARGUMENT, f"no execution context {ctx}")
        return call.contexts[ctx]

    def _set_input(self, call: NnCall, grant: NnGrant, mem: GuestMemory, ctx: int, index: int,
                   tensor_ptr: int) -> NnErrno:
        context = self._context(call, ctx)
        inputs = context.model.inputs
        if index >= len(inputs):
            raise Refused(NnErrno.INVALID_ARGUMENT, f"input {index}: the model has {len(inputs)} input(s)")
        spec = inputs[index]
        dims_ptr, dims_len, type_code, data_ptr, data_len = nn_state.TENSOR.unpack(
            mem.view(tensor_ptr, nn_state.TENSOR.size, "tensor"))
        if dims_len > nn_state.MAX_RANK:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"tensor of rank {dims_len}")
        dims = mem.u32s(dims_ptr, dims_len, "tensor dimensions")
        dtype = nn_state.DTYPES.get(type_code)
        if dtype is None:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"unknown tensor type {type_code}")
        if dtype != spec.dtype:
            raise Refused(NnErrno.INVALID_ARGUMENT,
                        f"input {index} is {spec.dtype.name} (type {spec.wasi_nn_type}), not {dtype.name}")
        if dims != spec.shape:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"input {index} has dims {list(spec.shape)}, not {list(dims)}")
        if data_len != spec.nbytes:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"input {index} takes {spec.nbytes} bytes, not {data_len}")
        view = mem.view(data_ptr, data_len, "tensor data")
        value = np.frombuffer(memoryview(view), dtype=spec.dtype).reshape(spec.shape)
        try:
            context.lease.set_input(index, value)  # copies into the interpreter
        except (ValueError, RuntimeError) as exc:  # a guest-supplied model can disagree with itself
            raise Refused(NnErrno.RUNTIME_ERROR, f"set_input failed: {exc}") from exc
        context.inputs_set.add(index)
        context.computed = False
        return NnErrno.SUCCESS

    def _compute(self, call: NnCall, grant: NnGrant, mem: GuestMemory, ctx: int) -> NnErrno:
        context = self._context(call, ctx)
        missing = sorted(set(range(len(context.model.inputs))) - context.inputs_set)
        if missing:
            raise Refused(NnErrno.INVALID_ARGUMENT, f"input(s) {missing} not set")
        try:
            context.lease.invoke()
        except (ValueError, RuntimeError) as exc:
            raise Refused(NnErrno.RUNTIME_ERROR, f"inference failed: {exc}") from exc
        context.computed = True
        return NnErrno.SUCCESS

    def _get_output(self, call: NnCall, grant: NnGrant, mem: GuestMemory, ctx: int, index: int, out_ptr: int,
                    out_max: int, written_out: int) -> NnErrno:
        context = self._context(call, ctx)
        outputs = context.model.outputs
        if index >= len(outputs):
            raise Refused(NnErrno.INVALID_ARGUMENT, f"output {index}: the model has {len(outputs)} output(s)")
        if not context.computed:
            raise Refused(NnErrno.INVALID_ARGUMENT, "compute() has not run since the inputs were set")
        mem.view(written_out, 4, "written_out")
        mem.view(out_ptr, out_max, "output buffer")
        try:
            value = context.lease.output(index)
        except (ValueError, RuntimeError) as exc:
            raise Refused(NnErrno.RUNTIME_ERROR, f"get_output failed: {exc}") from exc
        if value.nbytes > out_max:
            raise Refused(NnErrno.TOO_LARGE, f"output {index} is {value.nbytes} bytes; the buffer holds {out_max}")
        mem.write(out_ptr, np.ascontiguousarray(value).data, "output buffer")
        mem.write_u32(written_out, value.nbytes, "written_out")
        return NnErrno.SUCCESS
