"""The function pool wired from settings, once: model registry -> WASI-NN host -> pool.

``app.py`` (the daemon) and ``cli.py`` (``edged functions``, ``edged invoke``) build their pools here.
The caller owns the lifecycle: enter ``models`` (reads every model once) before ``pool``, and leave them
in reverse; ``edged functions`` only lists, so it never loads the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from edged.budget import MemoryBudget
from edged.inference.tflite import ModelRegistry
from edged.settings import ModelSettings, Settings
from edged.wasm.host.nn import NnHost
from edged.wasm.pool import FunctionPool, OnCall

__all__ = ["PoolParts", "build_pool", "model_registry"]


class PoolParts(NamedTuple):
    models: ModelRegistry
    pool: FunctionPool


def build_pool(settings: Settings, *, only: str | None = None, on_call: OnCall | None = None,
               budget: MemoryBudget | None = None) -> PoolParts:
    """The registry of declared models and the pool running ``settings.functions`` with WASI-NN linked.

    With ``only``, just that function and the models it may load (``edged invoke``); KeyError when
    there is no such function. ``budget`` is the daemon's memory budget (None: unbounded, for tools).
    A frame result may have as many pixels as the largest input edged accepts.
    """
    functions = settings.functions if only is None else {only: settings.functions[only]}
    declared = settings.models if only is None else {m: settings.models[m] for m in functions[only].models}
    models = model_registry(settings, declared)
    max_result_pixels = max(settings.http.max_pixels, settings.mqtt.max_pixels)
    # With deploy on, instance slots fit the largest memory an API deploy may grant: a deploy needs no restart.
    min_slot_mb = settings.deploy.max_memory_mb if settings.deploy.enabled and only is None else 1
    pool = FunctionPool(functions, settings.pool, settings.state_dir / "cache", NnHost(models), on_call=on_call,
                        budget=budget, max_result_pixels=max_result_pixels, min_slot_mb=min_slot_mb)
    return PoolParts(models, pool)


def model_registry(settings: Settings, declared: Mapping[str, ModelSettings] | None = None) -> ModelRegistry:
    """The registry of ``declared`` (default: every model in ``settings``), not loaded yet."""
    # One interpreter per worker and model at most: a worker runs one call at a time.
    return ModelRegistry(settings.models if declared is None else declared, backend=settings.nn_backend,
                         max_interpreters=settings.pool.workers)
