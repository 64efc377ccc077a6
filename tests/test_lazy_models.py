"""Interpreters of declared models are allocated on first use (edged/inference/interpreters.py): validated
at startup by a probe, then held built but unallocated while idle, and never more than ``max_interpreters``;
``[models.NAME] preload`` allocates one at startup instead."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.inference.tflite import Backend, Interpreter, Model, ModelError, ModelRegistry, load_backend
from edged.settings import ConfigError, ModelSettings, load_settings
from tests.configs import daemon_config, write_config

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data"
TINY_F32 = DATA / "tiny_f32.tflite"
SHAPE = (1, 4, 4, 3)


class _Counted:
    """A real interpreter that records when its tensors are allocated, and can be told to fail then."""

    def __init__(self, inner: Interpreter, log: list[str], fail: threading.Event) -> None:
        self._inner = inner
        self._log = log
        self._fail = fail
        self.allocated = False

    def allocate_tensors(self) -> None:
        self._log.append("allocate")
        if self._fail.is_set():
            raise RuntimeError("out of arena memory (simulated)")
        self._inner.allocate_tensors()
        self.allocated = True

    def get_input_details(self) -> list[dict[str, Any]]:
        return self._inner.get_input_details()

    def get_output_details(self) -> list[dict[str, Any]]:
        return self._inner.get_output_details()

    def set_tensor(self, tensor_index: int, value: np.ndarray[Any, Any]) -> None:
        if not self.allocated:
            raise AssertionError("set_tensor on an unallocated interpreter")
        self._inner.set_tensor(tensor_index, value)

    def get_tensor(self, tensor_index: int) -> np.ndarray[Any, Any]:
        return self._inner.get_tensor(tensor_index)

    def invoke(self) -> None:
        self._inner.invoke()


class _Factory:
    def __init__(self) -> None:
        self.real = load_backend("auto")
        self.log: list[str] = []
        self.fail = threading.Event()
        self.made: list[_Counted] = []

    def __call__(self, *, model_content: bytes, num_threads: int) -> Interpreter:
        self.log.append("build")
        made = _Counted(self.real.factory(model_content=model_content, num_threads=num_threads), self.log,
                        self.fail)
        self.made.append(made)
        return made

    def backend(self) -> Backend:
        return Backend(name="counted", package=self.real.package, version=self.real.version, factory=self)


def _solid(color: int) -> np.ndarray[Any, Any]:
    pixels = np.zeros(SHAPE, np.float32)
    pixels[..., color] = 1.0
    return pixels


def _classify(model: Model, color: int) -> int:
    lease = model.checkout(timeout=5)
    assert lease is not None
    try:
        lease.set_input(0, _solid(color))
        lease.invoke()
        return int(np.argmax(lease.output(0)))
    finally:
        lease.release()


def test_a_loaded_model_holds_one_built_interpreter_and_allocates_it_on_first_use() -> None:
    factory = _Factory()
    model = Model("tiny", TINY_F32.read_bytes(), backend=factory.backend(), max_interpreters=2)
    # The probe was built and allocated (validation), then dropped; one more is built, not allocated.
    assert factory.log == ["build", "allocate", "build"]
    assert model.inputs[0].shape == SHAPE
    assert not factory.made[1].allocated
    assert model.stats() == {"created": 1, "live": 1, "idle": 1, "allocated": 0, "in_use": 0, "max": 2}
    assert _classify(model, 2) == 2  # the first call allocates it, and it answers correctly
    assert factory.log == ["build", "allocate", "build", "allocate"]
    assert [_classify(model, c) for c in (0, 1, 2)] == [0, 1, 2]
    assert factory.log.count("allocate") == 2  # reused, not allocated again
    assert model.stats() == {"created": 1, "live": 1, "idle": 1, "allocated": 1, "in_use": 0, "max": 2}


def test_lazily_made_interpreters_stay_bounded_by_max_interpreters() -> None:
    factory = _Factory()
    model = Model("tiny", TINY_F32.read_bytes(), backend=factory.backend(), max_interpreters=2)
    first = model.checkout(timeout=5)
    second = model.checkout(timeout=5)
    assert first is not None
    assert second is not None
    assert model.checkout(timeout=0.05) is None  # a third is never made
    assert model.stats()["created"] == 2
    first.release()
    second.release()
    assert [_classify(model, c) for c in (1, 0)] == [1, 0]
    assert model.stats() == {"created": 2, "live": 2, "idle": 2, "allocated": 2, "in_use": 0, "max": 2}


def test_an_allocation_that_fails_on_first_use_fails_that_checkout_and_frees_its_slot() -> None:
    factory = _Factory()
    model = Model("tiny", TINY_F32.read_bytes(), backend=factory.backend(), max_interpreters=1)
    factory.fail.set()
    with pytest.raises(ModelError, match="out of arena memory"):
        model.checkout(timeout=5)
    assert model.stats()["live"] == 0
    assert model.stats()["in_use"] == 0
    factory.fail.clear()
    assert _classify(model, 1) == 1  # the slot is free again: a new interpreter is made
    assert model.stats()["live"] == 1


def test_a_model_that_does_not_allocate_fails_at_load_not_on_first_use(tmp_path: Path) -> None:
    factory = _Factory()
    factory.fail.set()
    with pytest.raises(ModelError, match="out of arena memory"):
        Model("tiny", TINY_F32.read_bytes(), backend=factory.backend())


def test_guest_supplied_models_keep_the_probe_as_their_only_interpreter() -> None:
    registry = ModelRegistry({"tiny": ModelSettings(path=TINY_F32)})
    model = registry.load_bytes(TINY_F32.read_bytes())
    assert model.stats() == {"created": 1, "live": 1, "idle": 1, "allocated": 1, "in_use": 0, "max": 1}
    assert _classify(model, 0) == 0
    assert model.stats()["created"] == 1


def test_a_preloaded_model_allocates_its_interpreter_at_startup() -> None:
    factory = _Factory()
    model = Model("tiny", TINY_F32.read_bytes(), backend=factory.backend(), max_interpreters=2, lazy=False)
    # The probe is kept as the first interpreter: one build, one allocation, nothing left for a call to do.
    assert factory.log == ["build", "allocate"]
    assert model.stats() == {"created": 1, "live": 1, "idle": 1, "allocated": 1, "in_use": 0, "max": 2}
    assert _classify(model, 1) == 1
    assert factory.log == ["build", "allocate"]
    # Further interpreters (calls at once) are still made on demand, within max_interpreters.
    first, second = model.checkout(timeout=5), model.checkout(timeout=5)
    assert first is not None
    assert second is not None
    assert model.checkout(timeout=0.05) is None
    first.release()
    second.release()
    assert model.stats() == {"created": 2, "live": 2, "idle": 2, "allocated": 2, "in_use": 0, "max": 2}


def test_the_registry_preloads_only_the_models_that_ask() -> None:
    models = {"lazy": ModelSettings(path=TINY_F32), "ready": ModelSettings(path=TINY_F32, preload=True)}
    with ModelRegistry(models, max_interpreters=2) as registry:
        lazy, ready = registry.get("lazy"), registry.get("ready")
        assert lazy is not None
        assert ready is not None
        assert lazy.stats()["allocated"] == 0
        assert ready.stats()["allocated"] == 1
        assert ready.stats()["live"] == lazy.stats()["live"] == 1
        assert [_classify(m, 2) for m in (lazy, ready)] == [2, 2]
        assert lazy.stats()["allocated"] == 1
        assert lazy.stats()["created"] == ready.stats()["created"] == 1


def test_preload_is_a_boolean_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.configs.PRELOAD_MODELS", False)  # as in every run but the emulated one
    assert ModelSettings(path=TINY_F32).preload is False
    cfg = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state", models={"a": {"path": TINY_F32, "preload": True}, "b": {"path": TINY_F32}}))
    settings = load_settings(cfg)
    assert settings.models["a"].preload is True
    assert settings.models["b"].preload is False
    # The environment reaches a declared model's key like any other nested setting.
    monkeypatch.setenv("EDGED_MODELS__B__PRELOAD", "true")
    assert load_settings(cfg).models["b"].preload is True
    monkeypatch.delenv("EDGED_MODELS__B__PRELOAD")
    bad = write_config(tmp_path / "bad.toml", daemon_config(
        tmp_path / "state", models={"a": {"path": TINY_F32, "preload": "soon"}}))
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert [key for key, _ in info.value.problems] == ["models.a.preload"]
