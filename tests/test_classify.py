"""The classify function (functions/classify): real ImageNet classification through WASI-NN on TFLite.

End to end through the daemon's HTTP API (``POST /v1/functions/classify`` and the demo's
``POST /api/image`` with ``api: go``) and ``edged invoke``; through the pool for the grant and the
"interpreters are loaded once" checks. The scores are compared with the same model called natively on
the same image (Pillow decode, bilinear resize to 224x224, interpreter): the function resizes like
Pillow, so the two agree to float rounding.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wasmtime
from PIL import Image

from edged.errors import FunctionFailed
from edged.frames import Frame, decode
from edged.inference.tflite import ModelRegistry, load_backend
from edged.settings import FunctionSettings, ModelSettings, PoolSettings
from edged.wasm.host.nn import NnHost
from edged.wasm.pool import FunctionPool
from tests.assets import CLASSIFY_WASM as WASM
from tests.assets import DATA, LABELS, MODEL, REPO
from tests.configs import PRELOAD_MODELS, daemon_config, write_config
from tests.daemon import Daemon, run_daemon
from tests.pools import call_sync

pytestmark = pytest.mark.timeout(300)

NAME = "efficientnet_lite0"
CATS = {"Egyptian cat", "tabby", "tiger cat"}
MAX_PIXELS = 40_000_000


def _config(tmp: Path) -> Path:
    return write_config(tmp / "edged.toml", daemon_config(
        tmp / "state", device_id="test-classify",
        models={NAME: {"path": MODEL, "labels": LABELS},
                "tiny": {"path": DATA / "tiny_f32.tflite", "labels": DATA / "tiny_labels.txt"}},
        functions={
            # The model name and labels come from the grant and the declaration: no preopen.
            "classify": {"module": WASM, "models": [NAME], "memory_mb": 256},
            # Granted a model whose input is [1,4,4,3]: the function's 224x224 tensor is refused by set_input.
            "classify-tiny": {"module": WASM, "models": ["tiny"], "memory_mb": 256},
        }))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _config(tmp_path_factory.mktemp("classify"))


@pytest.fixture(scope="module")
def daemon(config: Path) -> Iterator[Daemon]:
    with run_daemon(config) as d:
        yield d


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def native() -> Any:
    """The same model called directly: Pillow decode and bilinear resize, then the interpreter."""
    interpreter = load_backend("auto").factory(model_content=MODEL.read_bytes(), num_threads=1)
    interpreter.allocate_tensors()
    lock = threading.Lock()

    def scores(image: Image.Image) -> np.ndarray[Any, np.dtype[np.float32]]:
        tensor = np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR), np.float32)[None]
        with lock:
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
            interpreter.invoke()
            out: np.ndarray[Any, np.dtype[np.float32]] = interpreter.get_tensor(
                interpreter.get_output_details()[0]["index"])[0]
        return out

    return scores


def _check_shape(result: dict[str, Any]) -> None:
    assert set(result) == {"label", "confidence", "top", "model"}
    assert result["model"] == NAME
    top = result["top"]
    assert len(top) == 5
    assert all(set(entry) == {"label", "score"} for entry in top)
    scores = [entry["score"] for entry in top]
    assert scores == sorted(scores, reverse=True)
    assert result["label"] == top[0]["label"]
    assert result["confidence"] == top[0]["score"]


def _agrees_with_native(result: dict[str, Any], native_scores: np.ndarray[Any, Any]) -> None:
    labels = LABELS.read_text().splitlines()
    order = np.argsort(-native_scores, kind="stable")[:5]
    assert [entry["label"] for entry in result["top"]] == [labels[i] for i in order]
    for entry, i in zip(result["top"], order, strict=True):
        assert entry["score"] == pytest.approx(float(native_scores[i]), abs=1e-5)


# -- over HTTP -------------------------------------------------------------------------------------------

def test_http_classifies_the_cat(daemon: Daemon, native: Any) -> None:
    status, result = _post(f"{daemon.url}/v1/functions/classify", (DATA / "chelsea.jpg").read_bytes())
    assert status == 200, result
    _check_shape(result)
    assert result["label"] == "Egyptian cat"
    assert {entry["label"] for entry in result["top"]} >= CATS
    _agrees_with_native(result, native(Image.open(DATA / "chelsea.jpg")))


def test_legacy_api_go_classifies_the_espresso(daemon: Daemon, native: Any) -> None:
    status, result = _post(f"{daemon.url}/api/image", (DATA / "coffee.jpg").read_bytes(), {"api": "go"})
    assert status == 200, result
    _check_shape(result)
    assert result["label"] == "espresso"
    _agrees_with_native(result, native(Image.open(DATA / "coffee.jpg")))


@pytest.mark.parametrize("variant", ["portrait", "large", "png-small"])
def test_other_sizes_match_native(daemon: Daemon, native: Any, variant: str) -> None:
    """Both resize orders (the function picks Pillow's) and upscaling give the native scores."""
    img = Image.open(DATA / "chelsea.jpg").convert("RGB")
    if variant == "portrait":
        img = img.transpose(Image.Transpose.ROTATE_90)  # 300x451: the vertical pass goes first
    elif variant == "large":
        img = img.resize((1600, 1064), Image.BICUBIC)
    else:
        img = img.resize((180, 120), Image.BICUBIC)  # upscaled to 224
    out = io.BytesIO()
    img.save(out, "PNG")
    status, result = _post(f"{daemon.url}/v1/functions/classify", out.getvalue())
    assert status == 200, result
    _agrees_with_native(result, native(img))
    assert result["top"][0]["label"] in CATS


@pytest.mark.parametrize("body", [b"", b"not an image at all", (DATA / "chelsea.jpg").read_bytes()[:300]])
def test_corrupt_image_is_a_400(daemon: Daemon, body: bytes) -> None:
    status, result = _post(f"{daemon.url}/v1/functions/classify", body)
    assert status == 400, result
    assert result["error"] == "bad_image"


def test_wasi_nn_error_reaches_the_http_caller(daemon: Daemon) -> None:
    status, result = _post(f"{daemon.url}/v1/functions/classify-tiny", (DATA / "chelsea.jpg").read_bytes())
    assert status == 500
    assert result["error"] == "function_error"
    detail = json.loads(result["detail"])
    assert detail == {"error": "wasi_nn", "call": "set_input", "errno": 1, "errno_name": "invalid_argument",
                      "model": "tiny"}


# -- edged invoke ------------------------------------------------------------------------------------------

def test_invoke_classifies_a_file(config: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edged", "--config", str(config), "invoke", "classify",
                          str(DATA / "coffee.jpg")], capture_output=True, text=True, timeout=120, check=False,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    _check_shape(result)
    assert result["label"] == "espresso"


def test_function_without_the_grant_cannot_load_the_model(tmp_path: Path) -> None:
    """The same module with no models grant is refused when it is loaded, and the message says why."""
    cfg = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state", models={NAME: {"path": MODEL, "labels": LABELS}},
        functions={"classify": {"module": WASM, "memory_mb": 256}}))
    out = subprocess.run([sys.executable, "-m", "edged", "--config", str(cfg), "invoke", "classify",
                          str(DATA / "coffee.jpg")], capture_output=True, text=True, timeout=120, check=False,
                         cwd=REPO)
    assert out.returncode == 78, out.stderr  # EX_CONFIG
    assert "imports edged.model_labels, edged.model_name, wasi_ephemeral_nn.compute" in out.stderr
    assert "may load no model: grant one with models = [...] in [functions.classify]" in out.stderr
    assert out.stdout == ""


# -- the committed module ------------------------------------------------------------------------------------

def test_build_sh_rebuilds_the_committed_module(tmp_path: Path) -> None:
    """functions/build.sh from the sources gives classify.wasm byte for byte (no crates, pinned toolchain)."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target")}
    build = subprocess.run([REPO / "functions" / "build.sh", tmp_path / "out", "classify"], env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    assert (tmp_path / "out" / "classify.wasm").read_bytes() == WASM.read_bytes()


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "not an edged frame"),
    (b"x" * 40, "not an edged frame"),
    (struct.pack("<8I", 0x31464445, 1, 10, 10, 3, 1, 300, 0) + bytes(299), "disagrees with its header"),
    (struct.pack("<8I", 0x31464445, 1, 0x10000, 0x10000, 3, 1, 0, 0), "disagrees with its header"),
    (struct.pack("<8I", 0x31464445, 2, 0, 0, 0, 1, 5, 0) + b"abcde", "decoded RGB frames"),
], ids=["empty", "magic", "short", "overflow", "raw"])
def test_malformed_input_fails_with_json_detail(payload: bytes, message: str) -> None:
    """The pool never sends these; the module must still answer with an error, not trap."""
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    outputs: list[bytes] = []
    i32 = wasmtime.ValType.i32()

    def output(caller: wasmtime.Caller, ptr: int, length: int, kind: int) -> int:
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        outputs.append(bytes(memory.read(caller, ptr, ptr + length)))
        return 0

    linker.define_func("edged", "output", wasmtime.FuncType([i32] * 3, [i32]), output, access_caller=True)
    for name, params in {"load_by_name": 3, "init_execution_context": 2, "set_input": 3, "compute": 1,
                         "get_output": 5, "model_name": 4, "model_labels": 5}.items():
        module = "edged" if name.startswith("model_") else "wasi_ephemeral_nn"
        linker.define_func(module, name, wasmtime.FuncType([i32] * params, [i32]), lambda *a: 8)
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    exports = linker.instantiate(store, wasmtime.Module.from_file(engine, str(WASM))).exports(store)
    alloc, run, memory = exports["edged_alloc"], exports["edged_run"], exports["memory"]
    assert isinstance(alloc, wasmtime.Func)
    assert isinstance(run, wasmtime.Func)
    assert isinstance(memory, wasmtime.Memory)
    ptr = alloc(store, max(1, len(payload)))
    if payload:
        memory.write(store, payload, ptr)
    assert run(store, ptr, len(payload)) == 1
    assert message in json.loads(outputs[0])["error"]


# -- through the pool ---------------------------------------------------------------------------------------

def _frame(path: Path) -> Frame:
    return decode(path.read_bytes(), max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FunctionPool, ModelRegistry]]:
    fn = FunctionSettings(module=WASM, models=(NAME,), memory_mb=256)
    registry = ModelRegistry({NAME: ModelSettings(path=MODEL, labels=LABELS, preload=PRELOAD_MODELS)},
                             max_interpreters=2)
    with registry, FunctionPool({"classify": fn}, PoolSettings(workers=2, queue=4),
                                tmp_path_factory.mktemp("cache"), extension=NnHost(registry)) as p:
        yield p, registry


def test_500_calls_keep_the_interpreters_loaded_once(pool: tuple[FunctionPool, ModelRegistry]) -> None:
    """The original demo created an interpreter per request and grew; here the count stays put."""
    p, registry = pool
    frames = [_frame(DATA / "chelsea.jpg"), _frame(DATA / "coffee.jpg")]
    expected = ["Egyptian cat", "espresso"]
    errors: list[BaseException] = []

    def calls(n: int, worker: int) -> None:
        try:
            for i in range(n):
                k = (i + worker) % 2
                result = call_sync(p, "classify", frames[k])
                assert result.json is not None
                assert result.json["label"] == expected[k]
        except BaseException as exc:
            errors.append(exc)

    def run(total: int) -> None:
        threads = [threading.Thread(target=calls, args=(total // 2, w)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "calls still running after 240 s"
        assert not errors, errors[:3]

    run(20)  # warm-up: each worker has had its interpreter by now
    model = registry.get(NAME)
    assert model is not None
    created = model.created
    assert 1 <= created <= 2
    run(500)
    assert model.created == created
    stats = model.stats()
    assert stats["in_use"] == 0
    assert stats["live"] == created
    assert p.stats()["classify"]["calls"] >= 520


def test_model_declared_without_labels_fails_the_call_cleanly(tmp_path: Path) -> None:
    """No labels in the model's declaration: a function_error with a JSON detail, not a trap."""
    fn = FunctionSettings(module=WASM, models=(NAME,), memory_mb=256)
    with ModelRegistry({NAME: ModelSettings(path=MODEL, preload=PRELOAD_MODELS)}) as registry, FunctionPool(
            {"classify": fn}, PoolSettings(workers=1, queue=0), tmp_path / "cache", extension=NnHost(registry)) as p:
        with pytest.raises(FunctionFailed) as info:
            call_sync(p, "classify", _frame(DATA / "chelsea.jpg"))
        error = json.loads(info.value.detail)["error"]
        assert error.startswith(f"no labels for model {NAME}: edged.model_labels failed: not_found (8)")
        model = registry.get(NAME)
        assert model is not None
        assert model.stats()["in_use"] == 0
