"""The ``wasi-command`` runner (docs/ABI.md): ``_start`` with the payload on stdin and the result on
stdout."""

from __future__ import annotations

import contextlib

import wasmtime

from edged.errors import BadOutput, FunctionError
from edged.frames import Frame
from edged.wasm.abi import Output, OutputRejected, classify_stdout
from edged.wasm.host.context import CallContext
from edged.wasm.outcome import Attempt, FunctionLoadError, trap_summary
from edged.wasm.rawcall import call_i32, export
from edged.wasm.runner import FunctionRunner, signature
from edged.wasm.scratch import Scratch

__all__ = ["CommandRunner"]

#: stdout read back to explain a failed command (its JSON, if it printed one).
_DETAIL_BYTES = 64 * 1024


class CommandRunner(FunctionRunner):
    """A WASI command run once per call: raw bytes on stdin, the result on stdout, exit status 0."""

    abi = "wasi-command"

    def _export_problem(self, exports: dict[str, object]) -> str | None:
        start = exports.get("_start")
        if not isinstance(start, wasmtime.FuncType) or signature(start) != ((), ()):
            return "a wasi-command module must export _start: () -> ()"
        return None

    def _check_loaded(self, pre: wasmtime.InstancePre) -> None:
        """Instantiate once (not running _start), so a module the instance pool cannot hold (more memories
        or tables, or a larger table, than a slot has) fails at load time, not on every call."""
        store = self._store(None)
        try:
            pre.instantiate(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise FunctionLoadError(self.name, f"cannot be instantiated: {trap_summary(str(exc))}") from None
        finally:
            store.close()

    def _stdio(self, wasi: wasmtime.WasiConfig, scratch: Scratch) -> None:
        scratch.stdout_limit = self.settings.max_output_bytes  # before stdout is opened: the ticker's bound
        wasi.stdin_file = str(scratch.stdin)
        wasi.stdout_file = str(scratch.stdout)
        wasi.stderr_file = str(scratch.stderr)

    def _attempt(self, ctx: CallContext, frame: Frame, scratch: Scratch, ticks: int) -> Attempt:
        scratch.write_stdin(frame.raw)  # before the WASI context opens it
        return super()._attempt(ctx, frame, scratch, ticks)

    def _run(self, store: wasmtime.Store, instance: wasmtime.Instance, memory: wasmtime.Memory | None,
             frame: Frame, attempt: Attempt) -> None:
        start = export(store, instance, "_start")
        assert isinstance(start, wasmtime.Func)
        call_i32(store, start, results=0)  # validate() checked _start: () -> ()
        attempt.status = 0

    def _refused(self, ctx: CallContext, scratch: Scratch) -> FunctionError | None:
        """Past ``max_output_bytes`` the call has failed, even if the guest then ran into its timeout."""
        limit = self.settings.max_output_bytes
        if scratch.stdout_size() > limit:
            return BadOutput(f"stdout is over max_output_bytes ({limit})")
        return None

    def _output(self, ctx: CallContext, scratch: Scratch) -> Output:
        limit = self.settings.max_output_bytes
        data = scratch.read_stdout(limit)
        if data is None:
            raise BadOutput(f"stdout is over max_output_bytes ({limit})")
        try:
            return classify_stdout(data)
        except OutputRejected as exc:
            raise BadOutput(exc.detail) from None

    def _failure_detail(self, status: int, ctx: CallContext, stderr: str, scratch: Scratch) -> str:
        """The JSON the command printed before failing, else its exit status and last line of stderr."""
        data = scratch.read_stdout(min(self.settings.max_output_bytes, _DETAIL_BYTES))
        if data:
            with contextlib.suppress(OutputRejected):
                output = classify_stdout(data)
                if output.json is not None:
                    return data.decode("utf-8")[:4096]
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        detail = f"exited with status {status}"
        return f"{detail}: {last[:500]}" if last else detail
