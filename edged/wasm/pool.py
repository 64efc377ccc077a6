"""The function pool: loads every module once, then runs calls and decodes on a bounded set of threads.

This module holds the calls; ``edged.wasm.poolcore`` the lifecycle and admission they are built on.

Admission is bounded twice: at most ``workers + queue`` calls and decodes are admitted (running or
waiting), and what they hold fits in the memory budget (edged.wasm.admission); past either, Overloaded
is raised at once, so memory never grows with load. Every call gets a fresh Store with its memory limit
and an epoch deadline; a ticker thread advances the epoch every tick (5-20 ms) and keeps the workers'
stdio files within their limits (edged.wasm.scratch). A frame's decode gets the deadline of the calls it
feeds (counted from when the work starts) and a cancel event set when the pool starts closing: no decode
holds a shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence

from edged.errors import FunctionError, Overloaded
from edged.frames import Frame, decode
from edged.wasm.admission import DEFAULT_MAX_RESULT_PIXELS, CallMemory, FrameHold
from edged.wasm.need import FULL_FRAME, FramePlan, frame_for, frame_plan
from edged.wasm.outcome import CallResult, FunctionLoadError
from edged.wasm.poolcore import PoolCore
from edged.wasm.poolstate import OnCall, OnOutcome
from edged.wasm.runner import FunctionRunner
from edged.wasm.ticker import TICK_SECONDS

__all__ = ["DEFAULT_MAX_RESULT_PIXELS", "TICK_SECONDS", "CallResult", "FunctionLoadError", "FunctionPool",
           "OnCall", "OnOutcome"]

log = logging.getLogger(__name__)


class FunctionPool(PoolCore):
    """Runs Wasm functions (docs/ABI.md) in worker threads. Use as ``with pool:`` or ``async with pool:``.

    ``extension`` adds imports for some functions (the WASI-NN host) or is None; ``on_call`` feeds metrics.
    ``budget`` is the process's memory budget (default: none, for tools and tests); ``max_result_pixels``
    bounds a frame result, as the input limit bounds a frame: encoding one costs ~5-10 bytes a pixel.
    """

    async def call(self, name: str, frame: Frame) -> CallResult:
        """Run function ``name`` on ``frame``; raise UnknownFunction, Overloaded or a FunctionError."""
        table = self._table
        return await self._submit(table, self._run, self._runner(table, name), frame, None)

    async def decode(self, data: bytes, max_pixels: int, timeout_ms: int | None = None) -> Frame:
        """``edged.frames.decode`` on a worker, within ``timeout_ms`` (from when it starts) and the memory
        budget while it runs; counts against the same bound as calls. The frame is the caller's."""
        job = self._submit(self._table, self._decode_now, data, max_pixels, timeout_ms, FrameHold(self.budget), True,
                           FULL_FRAME)
        frame, _started = await job
        return frame

    async def decode_and_call(self, data: bytes, max_pixels: int, name: str, *, digests: bool = False,
                              sha256: str | None = None) -> tuple[Frame, CallResult | FunctionError]:
        """Decode ``data`` and run ``name`` on it in one worker hand-off (one admission slot).

        With ``digests`` the frame's ``sha256`` is ``sha256``, else hashed on the worker, and an encoded
        result's too (off the event loop: ~2.5 us per KB here). Raises ImageError for an unacceptable image,
        UnknownFunction or Overloaded; a failed call is returned, not raised, since the frame it ran on is
        wanted either way.
        """
        table = self._table
        job = self._submit(table, self._decode_and_run, self._runner(table, name), data, max_pixels, digests,
                           sha256)
        return await job

    async def decode_and_call_each(self, data: bytes, max_pixels: int, names: Sequence[str], *, digests: bool = False,
                                   sha256: str | None = None) -> tuple[Frame, list[CallResult | FunctionError]]:
        """Decode ``data`` once and run every function in ``names`` on it, at once on several workers.

        The frame is decoded at the largest size one of them needs (edged.wasm.need) and stays reserved
        until its last call is over. Digests and errors as in ``decode_and_call``.
        """
        if len(names) == 1:
            frame, single = await self.decode_and_call(data, max_pixels, names[0], digests=digests, sha256=sha256)
            return frame, [single]
        table = self._table
        runners = [self._runner(table, name) for name in names]
        hold = FrameHold(self.budget)
        timeout_ms = min(r.settings.timeout_ms for r in runners)
        frame, started = await self._submit(table, self._decode_now, data, max_pixels, timeout_ms, hold, False,
                                            frame_plan((r.settings, r.need) for r in runners), digests, sha256)
        try:
            jobs = [self._submit(table, self._run, r, frame, started, digests) for r in runners]
        except BaseException:
            hold.release()
            raise
        settled = await asyncio.gather(*jobs, return_exceptions=True)
        hold.release()  # every call is over
        results: list[CallResult | FunctionError] = []
        for outcome in settled:
            if isinstance(outcome, CallResult | FunctionError):
                results.append(outcome)
            else:
                raise outcome
        return frame, results

    def decode_and_call_sync(self, data: bytes, max_pixels: int, name: str) -> CallResult:
        """Decode and call on the calling thread (``edged invoke``): no hand-off to a worker and back.

        Admitted like any other job and holding one of the ``workers`` permits; the thread gets its own
        linker and scratch files (meant for a few long-lived threads). Raises ImageError,
        UnknownFunction, Overloaded or the call's FunctionError.
        """
        table = self._table
        runner = self._runner(table, name)
        self._admit(table)
        try:
            _frame, outcome = self._permitted(self._decode_and_run, runner, data, max_pixels)
        finally:
            self._release(table)
        if isinstance(outcome, FunctionError):
            raise outcome
        return outcome

    def _decode_now(self, data: bytes, max_pixels: int, timeout_ms: int | None, hold: FrameHold,
                    release: bool, plan: FramePlan, digest: bool = False,
                    sha256: str | None = None, keep: bool = False) -> tuple[Frame, float]:
        """Decode within ``timeout_ms`` from now, as ``plan`` says; return the frame and when this started.
        ``hold`` keeps the pixels reserved unless ``release`` (released on any error). With ``digest`` the
        frame carries ``sha256`` (hashed here when not given); with ``keep`` its picture, for the one runner
        that packs it into its sandbox (edged.rgb8)."""
        started = time.monotonic()
        deadline = None if timeout_ms is None else started + timeout_ms / 1000
        try:
            frame = decode(data, max_pixels=max_pixels, deadline=deadline, cancel=self._cancel, admit=hold.admit,
                           need=plan.need, resize_to=plan.resize_to, full=plan.full, keep=keep)
        except BaseException:
            hold.release()
            raise
        if release:
            hold.release()
        else:
            hold.decoded(frame)
        if digest:
            frame = dataclasses.replace(frame, sha256=sha256 or hashlib.sha256(data).hexdigest())
        return frame, started

    def _decode_and_run(self, runner: FunctionRunner, data: bytes, max_pixels: int, digest: bool = False,
                        sha256: str | None = None) -> tuple[Frame, CallResult | FunctionError]:
        hold = FrameHold(self.budget)
        frame, started = self._decode_now(data, max_pixels, runner.settings.timeout_ms, hold, False,
                                          frame_plan([(runner.settings, runner.need)]), digest, sha256,
                                          runner.packs_pictures)
        try:
            return frame, self._run(runner, frame, started, digest)
        except FunctionError as exc:
            return frame, exc
        finally:
            hold.release()

    def _run(self, runner: FunctionRunner, frame: Frame, started: float | None, digest: bool = False) -> CallResult:
        """On a worker thread: one call, counted and logged whatever happens to it. Its deadline counts from
        ``started`` (``time.monotonic()`` when its frame's decode started), else from now. With ``digest``
        an encoded result carries its ``sha256``."""
        began = time.perf_counter()
        deadline = (time.monotonic() if started is None else started) + runner.settings.timeout_ms / 1000
        memory = CallMemory(self.budget, runner.name, runner.settings)
        try:
            memory.reserve_guest()
            result = runner.call(frame_for(runner.settings, frame), self._files.get(check=runner.uses_wasi),
                                 deadline=deadline, memory=memory,
                                 max_result_pixels=self._max_result_pixels)
        except FunctionError as exc:
            log.warning("function %s failed: %s: %s", runner.name, exc.code, exc.detail,
                        extra={"FUNCTION": runner.name, "ERROR_CODE": exc.code})
            self._record(runner, exc.code, time.perf_counter() - began)
            raise
        except Overloaded:
            with self._lock:
                self._overloaded += 1
            raise
        except Exception:
            log.exception("function %s: internal error", runner.name, extra={"FUNCTION": runner.name})
            self._record(runner, "internal", time.perf_counter() - began)
            raise
        finally:
            memory.release()
        self._record(runner, "ok", time.perf_counter() - began)
        if digest and result.json is None:
            result = dataclasses.replace(result, sha256=hashlib.sha256(result.body).hexdigest())
        return result
