"""A random guest calling every host import (``edged.*`` and ``wasi_ephemeral_nn``) with random i32s.

The guest (WAT) reads a program from its raw input, records of ``u32 import, i32 args[7]``, calls each
import with the first arguments it takes, and checks each answer lies in that import's errno space
(a violation ends the call with ``edged_run`` returning ``(import + 1) << 16 | answer & 0xffff``). It
reports ``{"calls", "zeros"}`` (``zeros``: answers that were 0). hypothesis writes the programs:
arguments in and out of bounds, huge lengths, negatives, and well-formed calls with a few arguments
changed, against a real FunctionPool with the real host imports, a models grant (tests/data/tiny_f32)
with guest model bytes allowed, and a loopback HTTP server on the function's allowlist.

Wanted: no host exception (nothing logged with a traceback or at ERROR by edged itself, nothing parked
in wasmtime's ``LAST_EXCEPTION``), every call a result or a FunctionError (``bad_output`` once the
program touched ``edged.output``), and the pool still working afterwards.

``EDGED_FUZZ_EXAMPLES=N`` runs N programs (in rounds of ``ROUND`` with fresh seeds) instead of the short
derandomized run, and prints the rate; run it with ``-p no:logging -s``::

    EDGED_FUZZ_EXAMPLES=100000 python -m pytest -p no:logging -s tests/test_fuzz_imports.py
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edged.errors import FunctionError
from edged.inference.tflite import ModelRegistry
from edged.settings import FunctionSettings, ModelSettings, PoolSettings
from edged.wasm.host.nn import NnHost
from edged.wasm.pool import FunctionPool
from tests.outbound import serve
from tests.pools import call_sync
from tests.wat import RESP_BUF, RESP_LEN, Wat, raw_frame, write_wasm

pytestmark = pytest.mark.timeout(3600)

DATA = Path(__file__).parent / "data"
SHORT_EXAMPLES = 200
ROUND = 5_000
LONG_EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "0"))
MIN_CALLS, MAX_CALLS = 6, 32
PAGES = 2
MEMORY = PAGES * 65536
OUT_U32 = RESP_LEN + 8  # graph and context handles land here (scratch, clear of the helpers' iovecs)

#: (module, name, i32 parameters), in the guest's import numbering.
IMPORTS = (
    ("edged", "output", 3), ("edged", "log", 3), ("edged", "http_request", 7), ("edged", "model_name", 4),
    ("edged", "model_labels", 5), ("wasi_ephemeral_nn", "load", 5), ("wasi_ephemeral_nn", "load_by_name", 3),
    ("wasi_ephemeral_nn", "init_execution_context", 2), ("wasi_ephemeral_nn", "set_input", 3),
    ("wasi_ephemeral_nn", "compute", 1), ("wasi_ephemeral_nn", "get_output", 5),
)
OUTPUT, HTTP = 0, 2
_WAT_NAMES = {"output": "$output", "log": "$log", "http_request": "$http"}  # imported by tests/wat.py


def _check(index: int) -> str:
    """WAT: whether ``$r`` lies in import ``index``'s errno space (the guard's "unexpected" answers
    included: only the log tells those apart)."""
    if index == HTTP:  # a status, or -1 -2 -5 -7
        return """(i32.or (i32.and (i32.ge_s (local.get $r) (i32.const 100)) (i32.le_s (local.get $r) (i32.const 599)))
                  (i32.or (i32.or (i32.eq (local.get $r) (i32.const -1)) (i32.eq (local.get $r) (i32.const -2)))
                          (i32.or (i32.eq (local.get $r) (i32.const -5)) (i32.eq (local.get $r) (i32.const -7)))))"""
    if IMPORTS[index][0] == "edged":  # abi.Errno: 0 1 2 3 5 7 8
        return """(i32.and (i32.le_u (local.get $r) (i32.const 8))
                  (i32.and (i32.ne (local.get $r) (i32.const 4)) (i32.ne (local.get $r) (i32.const 6))))"""
    return "(i32.le_u (local.get $r) (i32.const 8))"  # nn_errno 0..8


@dataclass
class Guest:
    wat: str
    #: Well-formed arguments per import, pointing at the seeded constants.
    templates: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: Addresses and lengths worth trying as arguments.
    interesting: list[int] = field(default_factory=list)


def build_guest(origin: str) -> Guest:
    w = Wat()
    name, name_len = w.const("tiny")
    model = (DATA / "tiny_f32.tflite").read_bytes()
    model_at, model_len = w.const(model)
    builder, _ = w.const(struct.pack("<II", model_at, model_len))
    dims, _ = w.const(struct.pack("<4I", 1, 4, 4, 3))
    data, data_len = w.const(bytes(4 * 48))
    tensor, _ = w.const(struct.pack("<IIBxxxII", dims, 4, 1, data, data_len))
    text, text_len = w.const("hello from the fuzzer\nsecond \x1b[31m line \u009b")
    result, result_len = w.const('{"fuzz": true}')
    requests = [w.const(r) for r in (f"GET {origin}/big", f"POST {origin}/echo\nX-A: b",
                                     "GET http://127.0.0.1:1/", "GET http://caf\u00e9.test/")]
    req, req_len = requests[0]
    guest = Guest("", templates={
        0: (result, result_len, 1), 1: (30, text, text_len),
        2: (req, req_len, text, text_len, RESP_BUF, 4096, RESP_LEN), 3: (0, RESP_BUF, 64, RESP_LEN),
        4: (name, name_len, RESP_BUF, 64, RESP_LEN), 5: (builder, 1, 4, 0, OUT_U32), 6: (name, name_len, OUT_U32),
        7: (0, OUT_U32), 8: (0, 0, tensor), 9: (0,), 10: (0, 0, RESP_BUF, 64, RESP_LEN)})
    guest.interesting = sorted({0, 1, 2, 3, 4, 5, 7, 8, 10, 20, 30, 40, 64, 4096, RESP_BUF, RESP_LEN, OUT_U32,
                                name, name_len, model_at, model_len, builder, dims, data, data_len, tensor, text,
                                text_len, result, result_len, MEMORY - 4, MEMORY - 1, MEMORY, MEMORY + 4,
                                0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0xFFFF_FFFC,
                                *(r for pair in requests for r in pair)})
    imports = "\n".join(f'  (import "{module}" "{fn}" (func ${fn} (param {" i32" * n}) (result i32)))'
                        for module, fn, n in IMPORTS if fn not in _WAT_NAMES)
    cases = []
    for index, (_, fn, n) in enumerate(IMPORTS):
        args = " ".join(f"(local.get $a{i})" for i in range(n))
        cases.append(f"(local.set $r (call {_WAT_NAMES.get(fn, '$' + fn)} {args}))\n"
                     f"        (local.set $ok {_check(index)})")
    count = len(IMPORTS)
    dispatch = f"(br_table {' '.join(f'$c{i}' for i in range(count))} (local.get $id))"
    for i in range(count):
        dispatch = f"(block $c{i} {dispatch})\n        {cases[i]}\n        (br $checked)"
    guest.wat = w.frame_module(f"""
    (local.set $p (i32.add (local.get $ptr) (i32.const 32)))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $p) (i32.const 32)) (local.get $end)))
        (local.set $id (i32.rem_u (i32.load (local.get $p)) (i32.const {count})))
        {" ".join(f"(local.set $a{i} (i32.load offset={4 + 4 * i} (local.get $p)))" for i in range(7))}
        (block $checked
        {dispatch})
        (if (i32.eqz (local.get $ok))
          (then (return (i32.or (i32.shl (i32.add (local.get $id) (i32.const 1)) (i32.const 16))
                                (i32.and (local.get $r) (i32.const 0xffff))))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (local.set $zeros (i32.add (local.get $zeros) (i32.eqz (local.get $r))))
        (local.set $p (i32.add (local.get $p) (i32.const 32)))
        (br $next)))
    {w.json(calls='(local.get $n)', zeros='(local.get $zeros)')}
    (drop (call $emit)) (i32.const 0)""", pages=PAGES, imports=imports, locals_=(
        "(local $p i32) (local $end i32) (local $id i32) (local $r i32) (local $ok i32) (local $n i32) "
        "(local $zeros i32) " + " ".join(f"(local $a{i} i32)" for i in range(7))))
    return guest


class Watch(logging.Handler):
    """Every record under ``edged`` while fuzzing: kept when it tells of a host failure, else counted.

    It replaces propagation to pytest's capture, which would keep a million records in memory.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.failures: list[str] = []
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        text = record.getMessage()  # formats guest text too, as a real handler would
        guest_text = record.name.startswith("edged.function.") and record.exc_info is None
        if record.exc_info is not None or (record.levelno >= logging.ERROR and not guest_text):
            self.failures.append(f"{record.name}: {text}\n{self.format(record) if record.exc_info else ''}")


@dataclass
class Fuzz:
    pool: FunctionPool
    guest: Guest
    watch: Watch
    calls: int = 0
    #: Host import calls made by all programs, and how many of them answered 0.
    imports: int = 0
    zeros: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def run(self, program: list[tuple[int, tuple[int, ...]]]) -> dict[str, int] | None:
        """One call of the program; its JSON result, or None when it failed as a FunctionError may."""
        raw = b"".join(struct.pack("<I7I", index, *[a & 0xFFFF_FFFF for a in (*args, 0, 0, 0, 0, 0, 0, 0)][:7])
                       for index, args in program)
        self.calls += 1
        failure: FunctionError | None = None
        result: dict[str, int] | None = None
        try:
            result = call_sync(self.pool, "fuzz", raw_frame(raw)).json
        except FunctionError as exc:
            failure = exc
        parked = getattr(wasmtime._func, "LAST_EXCEPTION", None)  # noqa: SLF001 (the parked-exception path)
        assert parked is None, f"a host import raised {parked!r} (program {program})"
        assert not self.watch.failures, "\n".join(self.watch.failures[:3])
        outcome = "ok" if failure is None else failure.code
        if failure is not None:
            assert failure.code == "bad_output", f"{failure.code}: {failure.detail} (program {program})"
            assert any(index == OUTPUT for index, _ in program) or "more than once" not in failure.detail
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.imports += len(program)
        if result is not None:
            assert result["calls"] == len(program), result
            self.zeros += result["zeros"]
        return result


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Fuzz]:
    if LONG_EXAMPLES and request.config.pluginmanager.has_plugin("logging"):
        # pytest's capture handler also attaches to non-propagating loggers and keeps every record.
        pytest.fail("run the long fuzz with -p no:logging (pytest would keep millions of log records)")
    tmp = tmp_path_factory.mktemp("fuzz")
    watch = Watch()
    edged_log = logging.getLogger("edged")
    saved = edged_log.level, edged_log.propagate
    edged_log.setLevel(logging.INFO)
    edged_log.propagate = False
    edged_log.addHandler(watch)
    try:
        with serve() as (origin, _seen), \
                ModelRegistry({"tiny": ModelSettings(path=DATA / "tiny_f32.tflite",
                                                     labels=DATA / "tiny_labels.txt")}) as registry:
            guest = build_guest(origin)
            fn = FunctionSettings(module=write_wasm(tmp, "fuzz", guest.wat), input="raw", timeout_ms=10_000,
                                  memory_mb=16, models=("tiny",), allow_model_bytes=True,
                                  allowed_hosts=(origin, "http://127.0.0.1:1"), private_hosts=(origin,))
            pool = FunctionPool({"fuzz": fn}, PoolSettings(workers=1, queue=1), tmp / "cache",
                                extension=NnHost(registry, checkout_timeout=1.0))
            with pool:
                yield Fuzz(pool, guest, watch)
    finally:
        edged_log.removeHandler(watch)
        edged_log.setLevel(saved[0])
        edged_log.propagate = saved[1]


_RECORD = struct.Struct("<BB" + "BI" * 7)


def decode_program(guest: Guest, blob: bytes) -> list[tuple[int, tuple[int, ...]]]:
    """A program from bytes (one draw per example is far cheaper than many small ones).

    Each record is an import, a mode (wild arguments, the template, or the template with some changed)
    and seven (selector, u32) pairs: an interesting value, a small one (indices, handles), a value in or
    just past the memory, or the raw u32 (in the guest, negative i32s and huge lengths alike).
    """
    program = []
    for offset in range(0, len(blob) - _RECORD.size + 1, _RECORD.size):
        index, mode, *pairs = _RECORD.unpack_from(blob, offset)
        index %= len(IMPORTS)
        values = [guest.interesting[v % len(guest.interesting)] if sel < 96 else v % 17 if sel < 128 else
                  v % (MEMORY + 64) if sel < 192 else v for sel, v in zip(pairs[::2], pairs[1::2], strict=True)]
        arity = IMPORTS[index][2]
        if mode < 96:
            args = values[:arity]
        else:
            args = list(guest.templates[index])
            for position, value in zip(pairs[:2 * (mode % 3):2], values, strict=False):
                args[position % arity] = value
        program.append((index, tuple(args)))
    return program


def _programs(guest: Guest) -> st.SearchStrategy[list[tuple[int, tuple[int, ...]]]]:
    blobs = st.binary(min_size=_RECORD.size * MIN_CALLS, max_size=_RECORD.size * MAX_CALLS)
    return blobs.map(lambda blob: decode_program(guest, blob))


def _search(fuzz: Fuzz, examples: int, *, rounds_seed: int | None) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=rounds_seed is None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
    @given(program=_programs(fuzz.guest))
    def run(program: list[tuple[int, tuple[int, ...]]]) -> None:
        fuzz.run(program)

    if rounds_seed is not None:
        run = seed(rounds_seed)(run)
    run()


def test_a_random_guest_gets_errnos_and_the_pool_keeps_working(fuzz: Fuzz) -> None:
    started = time.perf_counter()
    if LONG_EXAMPLES:
        for round_no in range(-(-LONG_EXAMPLES // ROUND)):
            _search(fuzz, min(ROUND, LONG_EXAMPLES - round_no * ROUND), rounds_seed=round_no)
    else:
        _search(fuzz, SHORT_EXAMPLES, rounds_seed=None)
    elapsed = time.perf_counter() - started
    print(f"\nfuzzed {fuzz.calls} programs ({fuzz.imports} host import calls, {fuzz.zeros} answered 0) in "
          f"{elapsed:.1f} s: {fuzz.calls / elapsed:.0f} programs/s, {fuzz.imports / elapsed:.0f} imports/s; "
          f"outcomes {fuzz.outcomes}, {fuzz.watch.seen} log records")
    assert fuzz.calls >= min(SHORT_EXAMPLES, LONG_EXAMPLES or SHORT_EXAMPLES)
    assert set(fuzz.outcomes) <= {"ok", "bad_output"}

    # Afterwards the same pool still runs a well-formed inference: load, context, input, compute, output.
    t = fuzz.guest.templates
    assert fuzz.run([(6, t[6]), (7, t[7]), (8, t[8]), (9, t[9]), (10, t[10]), (3, t[3])]) == {"calls": 6, "zeros": 6}


def test_each_template_is_well_formed(fuzz: Fuzz) -> None:
    """The seeded calls reach success, so the search starts from working calls (and the guest works)."""
    t = fuzz.guest.templates
    assert fuzz.run([(1, t[1]), (4, t[4]), (5, t[5]), (7, (0, OUT_U32))]) == {"calls": 4, "zeros": 4}
    assert fuzz.run([(HTTP, t[HTTP])]) == {"calls": 1, "zeros": 0}
    before = fuzz.outcomes.get("bad_output", 0)
    assert fuzz.run([(OUTPUT, t[OUTPUT])]) is None  # then the guest's own report is a second result
    assert fuzz.outcomes["bad_output"] == before + 1

