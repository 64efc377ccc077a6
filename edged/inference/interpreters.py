"""A model's interpreters: read once, validated at startup, pooled and allocated on first use.

A TFLite interpreter is not thread-safe, and creating one per request is what made the original demo's
memory grow. So each model keeps a bounded pool: a call checks an interpreter out, uses it alone, and
returns it. At most ``max_interpreters`` (the number of pool workers) exist per model, and an
interpreter is never used by two threads at once. ``invoke`` releases the GIL and runs with no edged
lock held: the pool's lock only guards checkout and return.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy.typing as npt

from edged.inference.runtime import Backend, Interpreter, TensorSpec

__all__ = ["Lease", "Model", "ModelError"]

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model could not be loaded (unreadable file, not a TFLite flatbuffer, unsupported tensors)."""


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

    With ``lazy`` (declared models unless ``preload``), interpreters are allocated on first use: an idle
    daemon holds one built interpreter per model, not its tensor arena and packed weights. Without it
    the model starts with one allocated interpreter, so its first call pays no allocation.
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
                    "allocated": self._live - len(self._unallocated), "in_use": self._in_use,
                    "max": self.max_interpreters}

    def close(self) -> None:
        """Drop the idle interpreters (leased ones go when their lease is released)."""
        with self._cond:
            self._closed = True
            self._live -= len(self._idle) + len(self._unallocated)
            self._idle.clear()
            self._unallocated.clear()
            self._cond.notify_all()
