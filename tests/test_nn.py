"""WASI-NN host (edged/wasm/host/nn.py) and the TFLite registry (edged/inference/tflite.py).

The guest is a small WAT module that re-exports each ``wasi_ephemeral_nn`` import, so every call below
crosses the real Wasm boundary with arguments the test chooses. The models are the tiny ones in
tests/data (float32 or uint8 [1,4,4,3] -> softmax [1,3]; red/green/blue -> class 0/1/2).
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wasmtime

from edged.inference import tflite
from edged.inference.tflite import Backend, BackendUnavailable, Interpreter, Model, ModelRegistry, load_backend
from edged.settings import ConfigError, FunctionSettings, ModelSettings, PoolSettings
from edged.wasm.abi import Errno
from edged.wasm.host.context import CallContext, activate
from edged.wasm.host.nn import NnHost
from edged.wasm.host.nn_state import MAX_GRAPHS, NnErrno
from edged.wasm.pool import FunctionLoadError, FunctionPool
from tests.assets import CLASSIFY_WASM

pytestmark = pytest.mark.timeout(120)

DATA = Path(__file__).parent / "data"
TINY_F32 = DATA / "tiny_f32.tflite"
TINY_U8 = DATA / "tiny_u8.tflite"
LABELS = DATA / "tiny_labels.txt"

SIGNATURES = {"load": 5, "load_by_name": 3, "init_execution_context": 2, "set_input": 3, "compute": 1,
              "get_output": 5, "model_name": 4, "model_labels": 5}
#: Imports that are not wasi_ephemeral_nn's: edged's model declarations, linked with it.
MODULES = {"model_name": "edged", "model_labels": "edged"}
# Guest memory layout used by the tests (2 pages = 128 KiB).
NAME, DIMS, TENSOR, DATA_AT, OUT, OUT_LEN, HANDLE, BUILDERS, MODEL_AT = (
    100, 300, 400, 1000, 3000, 3100, 3200, 3300, 4096)
PAGES = 2
MEMORY_SIZE = PAGES * 65536
SHAPE = (1, 4, 4, 3)
F32, U8 = 1, 3


def _wat(*, memory: bool = True) -> str:
    def params(n: int) -> str:
        return " ".join(["i32"] * n)

    imports = "".join(f'(import "{MODULES.get(name, "wasi_ephemeral_nn")}" "{name}" '
                      f'(func ${name} (param {params(n)}) (result i32)))\n'
                      for name, n in SIGNATURES.items())
    wrappers = "".join(
        f'(func (export "{name}") (param {params(n)}) (result i32) '
        + " ".join(f"local.get {i}" for i in range(n)) + f" call ${name})\n"
        for name, n in SIGNATURES.items())
    mem = f'(memory (export "memory") {PAGES})' if memory else f"(memory {PAGES})"
    return f"(module\n{imports}{mem}\n{wrappers})"


def _fn(models: tuple[str, ...] = ("tiny",), allow_model_bytes: bool = False) -> FunctionSettings:
    return FunctionSettings(module=Path("/unused.wasm"), models=models, allow_model_bytes=allow_model_bytes)


@pytest.fixture(scope="module")
def registry() -> Iterator[ModelRegistry]:
    models = {"tiny": ModelSettings(path=TINY_F32, labels=LABELS), "tiny_u8": ModelSettings(path=TINY_U8),
              "other": ModelSettings(path=TINY_F32)}
    with ModelRegistry(models, max_interpreters=2) as reg:
        yield reg


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@dataclass
class Guest:
    """One instance of the test module, its call context, and helpers to lay out arguments."""

    store: wasmtime.Store
    exports: Any
    memory: wasmtime.Memory | None
    ctx: CallContext
    nn: NnHost

    def __call__(self, name: str, *args: int) -> int:
        with activate(self.ctx):
            result = self.exports[name](self.store, *args)
        assert isinstance(result, int)
        return result

    def write(self, ptr: int, data: bytes) -> None:
        assert self.memory is not None
        self.memory.write(self.store, data, ptr)

    def read(self, ptr: int, length: int) -> bytes:
        assert self.memory is not None
        return bytes(self.memory.read(self.store, ptr, ptr + length))

    def u32(self, ptr: int) -> int:
        value: int = struct.unpack("<I", self.read(ptr, 4))[0]
        return value

    def load_by_name(self, name: str | bytes) -> tuple[int, int]:
        raw = name.encode() if isinstance(name, str) else name
        self.write(NAME, raw)
        errno = self("load_by_name", NAME, len(raw), HANDLE)
        return errno, self.u32(HANDLE)

    def context(self, model: str = "tiny") -> int:
        errno, graph = self.load_by_name(model)
        assert errno == NnErrno.SUCCESS, self.ctx.extensions
        assert self("init_execution_context", graph, HANDLE) == NnErrno.SUCCESS
        return self.u32(HANDLE)

    def tensor(self, data: bytes, *, dims: tuple[int, ...] = SHAPE, ty: int = F32, padding: bytes = b"\0\0\0",
               data_ptr: int = DATA_AT, data_len: int | None = None, at: int = TENSOR) -> int:
        self.write(DIMS, struct.pack(f"<{len(dims)}I", *dims))
        self.write(data_ptr, data)
        header = struct.pack("<II", DIMS, len(dims)) + bytes([ty]) + padding + struct.pack(
            "<II", data_ptr, len(data) if data_len is None else data_len)
        self.write(at, header)
        return at

    def classify(self, ctx: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        assert self("compute", ctx) == NnErrno.SUCCESS
        assert self("get_output", ctx, 0, OUT, 12, OUT_LEN) == NnErrno.SUCCESS
        assert self.u32(OUT_LEN) == 12
        return np.frombuffer(self.read(OUT, 12), np.float32)

    def end(self) -> None:
        self.nn.end_call(self.ctx)

    def last_error(self) -> str:
        state = self.ctx.extensions.get("wasi_nn")
        return str(getattr(state, "last_error", ""))


def _solid(color: int, dtype: type[np.generic] = np.float32) -> bytes:
    img = np.zeros(SHAPE, dtype)
    img[..., color] = 255
    return img.tobytes()


@pytest.fixture
def make_guest(registry: ModelRegistry, engine: wasmtime.Engine) -> Iterator[Any]:
    made: list[Guest] = []

    def make(fn: FunctionSettings | None = None, *, memory: bool = True, nn: NnHost | None = None) -> Guest:
        fn = fn or _fn()
        host = nn or NnHost(registry, checkout_timeout=0.5)
        linker = wasmtime.Linker(engine)
        host.link(linker, "t", fn)
        store = wasmtime.Store(engine)
        instance = linker.instantiate(store, wasmtime.Module(engine, wasmtime.wat2wasm(_wat(memory=memory))))
        exports = instance.exports(store)
        found = exports.get("memory")
        ctx = CallContext("t", fn, deadline=float("inf"), logger=logging.getLogger("test.nn"))
        guest = Guest(store, exports, found if isinstance(found, wasmtime.Memory) else None, ctx, host)
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.end()


# -- the happy paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("color", [0, 1, 2])
def test_load_by_name_classifies_a_solid_colour(make_guest: Any, color: int) -> None:
    g = make_guest()
    ctx = g.context()
    assert g("set_input", ctx, 0, g.tensor(_solid(color))) == NnErrno.SUCCESS
    scores = g.classify(ctx)
    assert int(np.argmax(scores)) == color
    assert scores[color] == pytest.approx(0.99991, abs=1e-4)


def test_u8_model_takes_u8_tensors(make_guest: Any) -> None:
    g = make_guest(_fn(("tiny_u8",)))
    ctx = g.context("tiny_u8")
    assert g("set_input", ctx, 0, g.tensor(_solid(2, np.uint8), ty=U8)) == NnErrno.SUCCESS
    assert int(np.argmax(g.classify(ctx))) == 2


def test_type_padding_bytes_are_ignored(make_guest: Any) -> None:
    g = make_guest()
    ctx = g.context()
    assert g("set_input", ctx, 0, g.tensor(_solid(1), padding=b"\xff\xee\xdd")) == NnErrno.SUCCESS
    assert int(np.argmax(g.classify(ctx))) == 1


def test_context_can_be_reused_for_several_inputs(make_guest: Any) -> None:
    g = make_guest()
    ctx = g.context()
    for color in (2, 0, 1):
        assert g("set_input", ctx, 0, g.tensor(_solid(color))) == NnErrno.SUCCESS
        assert int(np.argmax(g.classify(ctx))) == color


# -- grants --------------------------------------------------------------------------------------------

def test_load_by_name_outside_the_grant_is_not_found(make_guest: Any, registry: ModelRegistry) -> None:
    g = make_guest(_fn(("tiny",)))
    assert registry.get("other") is not None  # declared, but not granted to this function
    assert g.load_by_name("other")[0] == NnErrno.NOT_FOUND
    assert g.load_by_name("nonexistent")[0] == NnErrno.NOT_FOUND
    assert "not granted" in g.last_error()


def guest_models(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records the guest-supplied model bytes the registry is asked to parse."""
    parsed: list[bytes] = []
    real = registry.load_bytes

    def load_bytes(content: bytes, *, threads: int = 1) -> Model:
        parsed.append(content)
        return real(content, threads=threads)

    monkeypatch.setattr(registry, "load_bytes", load_bytes)
    return parsed


def test_load_of_guest_bytes_is_refused_without_allow_model_bytes(make_guest: Any, registry: ModelRegistry,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = guest_models(registry, monkeypatch)
    g = make_guest(_fn(("tiny",)))
    model = TINY_F32.read_bytes()
    g.write(MODEL_AT, model)
    g.write(BUILDERS, struct.pack("<II", MODEL_AT, len(model)))
    assert g("load", BUILDERS, 1, 4, 0, HANDLE) == NnErrno.UNSUPPORTED_OPERATION
    assert parsed == []  # refused before anything was parsed


def test_load_of_guest_bytes_with_the_grant(make_guest: Any, registry: ModelRegistry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = guest_models(registry, monkeypatch)
    g = make_guest(_fn((), allow_model_bytes=True))
    model = TINY_F32.read_bytes()
    g.write(MODEL_AT, model)
    g.write(BUILDERS, struct.pack("<II", MODEL_AT, len(model)))
    assert g("load", BUILDERS, 1, 4, 0, HANDLE) == NnErrno.SUCCESS
    assert parsed == [model]
    assert g("init_execution_context", g.u32(HANDLE), HANDLE) == NnErrno.SUCCESS
    ctx = g.u32(HANDLE)
    assert g("set_input", ctx, 0, g.tensor(_solid(0))) == NnErrno.SUCCESS
    assert int(np.argmax(g.classify(ctx))) == 0
    # Only declared models may be loaded by name, and this function has none.
    assert g.load_by_name("tiny")[0] == NnErrno.NOT_FOUND


@pytest.mark.parametrize(("encoding", "target", "builders", "corrupt", "errno"), [
    (0, 0, 1, False, NnErrno.INVALID_ENCODING),   # openvino
    (1, 0, 1, False, NnErrno.INVALID_ENCODING),   # onnx
    (5, 0, 1, False, NnErrno.INVALID_ENCODING),   # autodetect
    (4, 1, 1, False, NnErrno.UNSUPPORTED_OPERATION),  # gpu
    (4, 2, 1, False, NnErrno.UNSUPPORTED_OPERATION),  # tpu
    (4, 7, 1, False, NnErrno.INVALID_ARGUMENT),   # not a target
    (4, 0, 2, False, NnErrno.INVALID_ARGUMENT),   # a TFLite graph is one builder
    (4, 0, 1, True, NnErrno.INVALID_ARGUMENT),    # not a flatbuffer
])
def test_load_errors(make_guest: Any, encoding: int, target: int, builders: int, corrupt: bool,
                     errno: NnErrno) -> None:
    g = make_guest(_fn((), allow_model_bytes=True))
    model = TINY_F32.read_bytes()
    if corrupt:
        model = bytes(len(model))
    g.write(MODEL_AT, model)
    g.write(BUILDERS, struct.pack("<IIII", MODEL_AT, len(model), MODEL_AT, len(model)))
    assert g("load", BUILDERS, builders, encoding, target, HANDLE) == errno


def test_load_builder_outside_memory(make_guest: Any) -> None:
    g = make_guest(_fn((), allow_model_bytes=True))
    g.write(BUILDERS, struct.pack("<II", MEMORY_SIZE - 10, 100))
    assert g("load", BUILDERS, 1, 4, 0, HANDLE) == NnErrno.INVALID_ARGUMENT
    assert g("load", MEMORY_SIZE - 4, 1, 4, 0, HANDLE) == NnErrno.INVALID_ARGUMENT


def test_wasi_nn_is_not_linked_without_a_grant(registry: ModelRegistry, engine: wasmtime.Engine) -> None:
    nn = NnHost(registry)
    linker = wasmtime.Linker(engine)
    module = wasmtime.Module(engine, wasmtime.wat2wasm(_wat()))
    ungranted = _fn(())
    nn.link(linker, "t", ungranted)
    with pytest.raises(wasmtime.WasmtimeError, match="edged|wasi_ephemeral_nn"):
        linker.instantiate(wasmtime.Store(engine), module)
    problem = nn.check("t", ungranted, module)
    assert problem is not None
    assert "models = [...]" in problem
    assert "[functions.t]" in problem
    assert nn.check("t", _fn(("tiny",)), module) is None


def test_pool_refuses_an_ungranted_module_at_load_time(registry: ModelRegistry, tmp_path: Path) -> None:
    """A function without a models grant whose module imports WASI-NN does not load, and says why."""
    pool = FunctionPool({"sneaky": FunctionSettings(module=CLASSIFY_WASM)}, PoolSettings(workers=1, queue=0),
                        tmp_path / "cache", extension=NnHost(registry))
    with pytest.raises(FunctionLoadError, match=r"imports edged\.model_labels, .*wasi_ephemeral_nn\..* no model"):
        pool.start()
    pool.close()


# -- edged.model_name and edged.model_labels ---------------------------------------------------------------

def test_model_name_gives_the_grant_in_config_order(make_guest: Any) -> None:
    g = make_guest(_fn(("tiny_u8", "tiny")))
    names = []
    for index in range(2):
        assert g("model_name", index, OUT, 64, OUT_LEN) == Errno.OK
        names.append(g.read(OUT, g.u32(OUT_LEN)).decode())
    assert names == ["tiny_u8", "tiny"]
    assert g("model_name", 2, OUT, 64, OUT_LEN) == Errno.NOT_FOUND
    assert g("model_name", -1, OUT, 64, OUT_LEN) == Errno.NOT_FOUND


def test_model_labels_are_the_declared_ones(make_guest: Any) -> None:
    g = make_guest()
    g.write(NAME, b"tiny")
    assert g("model_labels", NAME, 4, OUT, 100, OUT_LEN) == Errno.OK
    text = g.read(OUT, g.u32(OUT_LEN)).decode()
    assert text.split("\n") == LABELS.read_text().split()


def test_model_labels_too_small_a_buffer_gives_the_length_only(make_guest: Any) -> None:
    g = make_guest()
    g.write(NAME, b"tiny")
    g.write(OUT, b"\xaa" * 8)
    assert g("model_labels", NAME, 4, OUT, 3, OUT_LEN) == Errno.TOO_LARGE
    assert g.u32(OUT_LEN) == len("\n".join(LABELS.read_text().split()))
    assert g.read(OUT, 8) == b"\xaa" * 8
    assert g("model_name", 0, OUT, 2, OUT_LEN) == Errno.TOO_LARGE
    assert g.u32(OUT_LEN) == len("tiny")


@pytest.mark.parametrize("name", ["other", "nonexistent", "tiny_u8"],
                         ids=["declared-not-granted", "not-declared", "granted-without-labels"])
def test_model_labels_outside_the_grant_or_undeclared_is_not_found(make_guest: Any, name: str) -> None:
    g = make_guest(_fn(("tiny", "tiny_u8")))
    g.write(NAME, name.encode())
    assert g("model_labels", NAME, len(name), OUT, 100, OUT_LEN) == Errno.NOT_FOUND


def test_model_imports_bad_arguments(make_guest: Any) -> None:
    g = make_guest()
    g.write(NAME, b"tiny")
    assert g("model_labels", MEMORY_SIZE - 2, 4, OUT, 100, OUT_LEN) == Errno.INVALID_ARGUMENT
    assert g("model_labels", NAME, 4, MEMORY_SIZE - 10, 100, OUT_LEN) == Errno.INVALID_ARGUMENT
    assert g("model_labels", NAME, 4, OUT, 100, MEMORY_SIZE - 2) == Errno.INVALID_ARGUMENT
    assert g("model_labels", NAME, 257, OUT, 100, OUT_LEN) == Errno.INVALID_ARGUMENT
    g.write(NAME, b"\xff\xfe")
    assert g("model_labels", NAME, 2, OUT, 100, OUT_LEN) == Errno.INVALID_ARGUMENT
    assert g("model_name", 0, MEMORY_SIZE - 2, 64, OUT_LEN) == Errno.INVALID_ARGUMENT
    assert g("model_name", 0, OUT, 64, -4) == Errno.INVALID_ARGUMENT


def test_model_imports_need_an_exported_memory(make_guest: Any) -> None:
    g = make_guest(memory=False)
    assert g("model_name", 0, OUT, 64, OUT_LEN) == Errno.INVALID_ARGUMENT
    assert g("model_labels", NAME, 4, OUT, 64, OUT_LEN) == Errno.INVALID_ARGUMENT


# -- bad arguments ---------------------------------------------------------------------------------------

def test_load_by_name_bad_pointers(make_guest: Any) -> None:
    g = make_guest()
    assert g("load_by_name", MEMORY_SIZE - 2, 4, HANDLE) == NnErrno.INVALID_ARGUMENT
    assert g("load_by_name", NAME, 4, MEMORY_SIZE - 2) == NnErrno.INVALID_ARGUMENT
    assert g("load_by_name", -1, 4, HANDLE) == NnErrno.INVALID_ARGUMENT  # 0xffffffff
    assert g("load_by_name", NAME, 100_000, HANDLE) == NnErrno.INVALID_ARGUMENT
    assert g.load_by_name(b"\xff\xfe")[0] == NnErrno.INVALID_ARGUMENT


def test_unknown_handles(make_guest: Any) -> None:
    g = make_guest()
    assert g("init_execution_context", 0, HANDLE) == NnErrno.INVALID_ARGUMENT  # no graph loaded yet
    assert g("init_execution_context", 12345, HANDLE) == NnErrno.INVALID_ARGUMENT
    assert g("set_input", 0, 0, g.tensor(_solid(0))) == NnErrno.INVALID_ARGUMENT
    assert g("compute", 3) == NnErrno.INVALID_ARGUMENT
    assert g("get_output", 0, 0, OUT, 12, OUT_LEN) == NnErrno.INVALID_ARGUMENT


@pytest.mark.parametrize(("change", "why"), [
    ({"ty": U8}, "u8 data for a float32 input"),
    ({"ty": 2}, "f64"),
    ({"ty": 9}, "no such type"),
    ({"dims": (1, 4, 4)}, "rank 3"),
    ({"dims": (1, 4, 3, 4)}, "wrong dims"),
    ({"dims": (1, 2, 2, 3, 4)}, "rank 5, same element count"),
    ({"data_len": 4 * 4 * 4 * 3 - 4}, "too few bytes"),
    ({"data_len": 4 * 4 * 4 * 3 + 4}, "too many bytes"),
    ({"data_ptr": MEMORY_SIZE - 100}, "data outside memory"),
])
def test_set_input_mismatches_are_invalid_argument(make_guest: Any, change: dict[str, Any], why: str) -> None:
    g = make_guest()
    ctx = g.context()
    data = _solid(0)
    # Data placed outside memory is not written; only its pointer and length are.
    tensor = g.tensor(b"", **change, data_len=len(data)) if "data_ptr" in change else g.tensor(data, **change)
    assert g("set_input", ctx, 0, tensor) == NnErrno.INVALID_ARGUMENT, why
    # A rejected tensor leaves the context usable.
    assert g("set_input", ctx, 0, g.tensor(_solid(2))) == NnErrno.SUCCESS
    assert int(np.argmax(g.classify(ctx))) == 2


def test_set_input_bad_index_and_tensor_pointer(make_guest: Any) -> None:
    g = make_guest()
    ctx = g.context()
    assert g("set_input", ctx, 1, g.tensor(_solid(0))) == NnErrno.INVALID_ARGUMENT
    assert g("set_input", ctx, 0, MEMORY_SIZE - 8) == NnErrno.INVALID_ARGUMENT
    g.write(DIMS, struct.pack("<I", 1))
    g.write(TENSOR, struct.pack("<IIBxxxII", MEMORY_SIZE - 4, 4, F32, DATA_AT, 192))
    assert g("set_input", ctx, 0, TENSOR) == NnErrno.INVALID_ARGUMENT  # dims outside memory
    g.write(TENSOR, struct.pack("<IIBxxxII", DIMS, 1_000_000, F32, DATA_AT, 192))
    assert g("set_input", ctx, 0, TENSOR) == NnErrno.INVALID_ARGUMENT  # absurd rank


def test_f32_tensor_for_a_u8_model_is_invalid_argument(make_guest: Any) -> None:
    g = make_guest(_fn(("tiny_u8",)))
    ctx = g.context("tiny_u8")
    assert g("set_input", ctx, 0, g.tensor(_solid(0))) == NnErrno.INVALID_ARGUMENT


def test_compute_needs_every_input_and_get_output_needs_compute(make_guest: Any) -> None:
    g = make_guest()
    ctx = g.context()
    assert g("compute", ctx) == NnErrno.INVALID_ARGUMENT
    assert g("set_input", ctx, 0, g.tensor(_solid(0))) == NnErrno.SUCCESS
    assert g("get_output", ctx, 0, OUT, 12, OUT_LEN) == NnErrno.INVALID_ARGUMENT
    assert g("compute", ctx) == NnErrno.SUCCESS
    assert g("get_output", ctx, 0, OUT, 12, OUT_LEN) == NnErrno.SUCCESS


def test_get_output_errors(make_guest: Any) -> None:
    g = make_guest()
    ctx = g.context()
    assert g("set_input", ctx, 0, g.tensor(_solid(0))) == NnErrno.SUCCESS
    assert g("compute", ctx) == NnErrno.SUCCESS
    g.write(OUT, b"\xaa" * 12)
    assert g("get_output", ctx, 0, OUT, 11, OUT_LEN) == NnErrno.TOO_LARGE
    assert g.read(OUT, 12) == b"\xaa" * 12  # nothing written on failure
    assert g("get_output", ctx, 1, OUT, 12, OUT_LEN) == NnErrno.INVALID_ARGUMENT
    assert g("get_output", ctx, 0, MEMORY_SIZE - 8, 12, OUT_LEN) == NnErrno.INVALID_ARGUMENT
    assert g("get_output", ctx, 0, OUT, 12, MEMORY_SIZE - 2) == NnErrno.INVALID_ARGUMENT
    assert g("get_output", ctx, 0, OUT, 4096, OUT_LEN) == NnErrno.SUCCESS  # a bigger buffer is fine
    assert g.u32(OUT_LEN) == 12


def test_no_exported_memory_is_missing_memory(make_guest: Any) -> None:
    g = make_guest(memory=False)
    assert g("load_by_name", NAME, 4, HANDLE) == NnErrno.MISSING_MEMORY


def test_outside_a_call_is_runtime_error(make_guest: Any) -> None:
    g = make_guest()
    result = g.exports["load_by_name"](g.store, NAME, 4, HANDLE)  # no activate(): no call context
    assert result == NnErrno.RUNTIME_ERROR


def test_an_unexpected_host_exception_becomes_runtime_error(make_guest: Any, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    g = make_guest()
    ctx = g.context()
    assert g("set_input", ctx, 0, g.tensor(_solid(0))) == NnErrno.SUCCESS

    def boom(self: object) -> None:
        raise TypeError("unexpected")

    monkeypatch.setattr("edged.inference.tflite.Lease.invoke", boom)
    with caplog.at_level(logging.ERROR, logger="edged.wasm.host.nn"):
        assert g("compute", ctx) == NnErrno.RUNTIME_ERROR
    assert "unexpected" in caplog.text


# -- interpreters: bounded, exclusive, returned -----------------------------------------------------------

def test_second_context_on_one_model_is_busy(make_guest: Any) -> None:
    g = make_guest()
    g.context()
    errno, graph = g.load_by_name("tiny")
    assert errno == NnErrno.SUCCESS
    assert g("init_execution_context", graph, HANDLE) == NnErrno.BUSY


def test_graph_handles_are_bounded(make_guest: Any) -> None:
    g = make_guest()
    for _ in range(MAX_GRAPHS):
        assert g.load_by_name("tiny")[0] == NnErrno.SUCCESS
    assert g.load_by_name("tiny")[0] == NnErrno.BUSY


def test_end_call_returns_the_interpreters(make_guest: Any, registry: ModelRegistry) -> None:
    model = registry.get("tiny")
    assert model is not None
    g = make_guest()
    g.context()
    assert model.stats()["in_use"] == 1
    g.end()
    assert model.stats()["in_use"] == 0
    assert "wasi_nn" not in g.ctx.extensions


def test_checkout_waits_then_answers_busy(make_guest: Any, registry: ModelRegistry) -> None:
    """max_interpreters is 2: a third concurrent call gets busy after the checkout timeout."""
    a, b, c = make_guest(), make_guest(), make_guest()
    a.context()
    b.context()
    errno, graph = c.load_by_name("tiny")
    assert c("init_execution_context", graph, HANDLE) == NnErrno.BUSY
    a.end()
    assert c("init_execution_context", graph, HANDLE) == NnErrno.SUCCESS
    model = registry.get("tiny")
    assert model is not None
    assert model.stats()["live"] <= 2


class _Exclusive:
    """Wraps a real interpreter and records any use by two threads at once."""

    def __init__(self, inner: Interpreter, overlaps: list[str]) -> None:
        self._inner = inner
        self._busy = threading.Lock()
        self._overlaps = overlaps

    def _enter(self) -> None:
        if not self._busy.acquire(blocking=False):
            self._overlaps.append(threading.current_thread().name)
            self._busy.acquire()

    def allocate_tensors(self) -> None:
        self._inner.allocate_tensors()

    def get_input_details(self) -> list[dict[str, Any]]:
        return self._inner.get_input_details()

    def get_output_details(self) -> list[dict[str, Any]]:
        return self._inner.get_output_details()

    def set_tensor(self, tensor_index: int, value: np.ndarray[Any, Any]) -> None:
        self._enter()
        try:
            self._inner.set_tensor(tensor_index, value)
        finally:
            self._busy.release()

    def get_tensor(self, tensor_index: int) -> np.ndarray[Any, Any]:
        self._enter()
        try:
            return self._inner.get_tensor(tensor_index)
        finally:
            self._busy.release()

    def invoke(self) -> None:
        self._enter()
        try:
            self._inner.invoke()
        finally:
            self._busy.release()


def test_interpreters_are_never_shared_between_threads() -> None:
    real = load_backend("auto")
    overlaps: list[str] = []

    def factory(*, model_content: bytes, num_threads: int) -> Interpreter:
        return _Exclusive(real.factory(model_content=model_content, num_threads=num_threads), overlaps)

    backend = Backend(name="checked", package=real.package, version=real.version, factory=factory)
    model = Model("tiny", TINY_F32.read_bytes(), backend=backend, max_interpreters=2)
    errors: list[BaseException] = []

    def worker(color: int) -> None:
        try:
            for _ in range(200):
                lease = model.checkout(timeout=10)
                assert lease is not None
                try:
                    lease.set_input(0, np.frombuffer(_solid(color), np.float32).reshape(SHAPE))
                    lease.invoke()
                    assert int(np.argmax(lease.output(0))) == color
                finally:
                    lease.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i % 3,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert not overlaps
    stats = model.stats()
    assert stats["created"] <= 2
    assert stats["in_use"] == 0


# -- backend and registry ---------------------------------------------------------------------------------

def test_backend_selection() -> None:
    """auto prefers ai-edge-litert; the aarch64 bundle (cross/) ships only tflite-runtime."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        assert load_backend("auto").name == "litert"
        assert load_backend("litert").package == "ai-edge-litert"
        return
    assert load_backend("auto").name == "tflite"
    with pytest.raises(BackendUnavailable, match="pip install ai-edge-litert"):
        load_backend("litert")


def test_tflite_backend_names_the_package_to_install() -> None:
    if importlib.util.find_spec("tflite_runtime") is not None and np.lib.NumpyVersion(np.__version__) < "2.0.0":
        assert load_backend("tflite").package == "tflite-runtime"
        return
    with pytest.raises(BackendUnavailable, match="pip install"):
        load_backend("tflite")


def test_registry_reads_each_model_once_and_validates_it(tmp_path: Path) -> None:
    with ModelRegistry({"tiny": ModelSettings(path=TINY_F32, labels=LABELS)}, max_interpreters=3) as reg:
        model = reg.get("tiny")
        assert model is not None
        assert model.labels == ("red", "green", "blue")
        assert model.inputs[0].shape == SHAPE
        assert model.inputs[0].wasi_nn_type == F32
        assert model.stats()["created"] == 1
        assert model.stats()["max"] == 3
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(ConfigError, match=r"models\.bad\.path"):
        ModelRegistry({"bad": ModelSettings(path=bad)}).load()
    with pytest.raises(ConfigError, match=r"models\.gone\.path"):
        ModelRegistry({"gone": ModelSettings(path=tmp_path / "missing.tflite")}).load()


def test_registry_without_models_imports_no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_runtime(name: str = "auto") -> Backend:
        raise AssertionError(f"a runtime ({name}) was loaded without a declared model")

    monkeypatch.setattr(tflite, "load_backend", no_runtime)
    reg = ModelRegistry({})
    reg.load()
    assert reg.get("anything") is None
