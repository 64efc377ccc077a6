"""Small builders for test modules in WebAssembly text (compiled with ``wasmtime.wat2wasm``).

Memory layout of every module built here:
    0..1023       scratch for the helpers (iovecs, out-pointers, digits)
    1024..8191    constant strings (``Wat.const``)
    8192..12287   the JSON being built (``Wat.put*``), emitted with ``edged.output`` or to stdout
    16384..32767  a buffer for HTTP responses and file contents
    65536..       the heap of ``edged_alloc`` (a bump allocator that grows memory as needed)
"""

from __future__ import annotations

import json
from pathlib import Path

import wasmtime

from edged.frames import Frame

__all__ = ["BUMP_ALLOC", "OUT_FD", "RESP_BUF", "RESP_LEN", "Wat", "raw_frame", "write_wasm"]

JSON_BUF = 8192
#: The smallest frame-v1 prelude, for hand-written modules: ABI version 1 and a bump ``edged_alloc`` from
#: 4096 that grows the memory as needed and returns 0 when it cannot (a module using it defines no $next).
BUMP_ALLOC = """  (global $next (mut i32) (i32.const 4096))
  (func (export "edged_abi_version") (result i32) (i32.const 1))
  (func (export "edged_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1)))
                        (i32.const -1)) (then (return (i32.const 0))))))
    (local.get $p))
"""
RESP_BUF = 16384
RESP_LEN = 900
OUT_FD = 904
_CONST_START = 1024
_CONST_END = 8192

_IMPORTS = """
  (import "edged" "output" (func $output (param i32 i32 i32) (result i32)))
  (import "edged" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "edged" "http_request" (func $http (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
"""

_HELPERS = """
  (global $heap (mut i32) (i32.const 65536))
  (global $cur (mut i32) (i32.const 8192))
  (global $counter (mut i32) (i32.const 0))

  ;; append len bytes at src to the JSON buffer
  (func $put (param $src i32) (param $len i32)
    (memory.copy (global.get $cur) (local.get $src) (local.get $len))
    (global.set $cur (i32.add (global.get $cur) (local.get $len))))

  ;; append a signed decimal number to the JSON buffer
  (func $put_int (param $v i32)
    (local $u i32) (local $p i32)
    (local.set $p (i32.const 600))
    (local.set $u (select (i32.sub (i32.const 0) (local.get $v)) (local.get $v)
                          (i32.lt_s (local.get $v) (i32.const 0))))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $u) (i32.const 10))))
      (local.set $u (i32.div_u (local.get $u) (i32.const 10)))
      (br_if $digits (local.get $u)))
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then (local.set $p (i32.sub (local.get $p) (i32.const 1)))
            (i32.store8 (local.get $p) (i32.const 45))))
    (call $put (local.get $p) (i32.sub (i32.const 600) (local.get $p))))

  ;; the JSON built so far, with edged.output; returns its errno
  (func $emit (result i32)
    (call $output (i32.const 8192) (i32.sub (global.get $cur) (i32.const 8192)) (i32.const 1)))

  ;; write len bytes at ptr to fd; returns the WASI errno
  (func $write_fd (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 800) (local.get $ptr))
    (i32.store (i32.const 804) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 800) (i32.const 1) (i32.const 808)))

  ;; the JSON built so far, to stdout
  (func $emit_stdout
    (drop (call $write_fd (i32.const 1) (i32.const 8192) (i32.sub (global.get $cur) (i32.const 8192)))))

  ;; burn roughly n iterations of CPU
  (func $spin (param $n i32)
    (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n))))

  (func $edged_alloc (export "edged_alloc") (param $len i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq (memory.grow (i32.sub (i32.add (i32.shr_u (local.get $end) (i32.const 16)) (i32.const 1))
                                          (memory.size)))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
"""


def _wat_string(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


class Wat:
    """Collects constant strings for one module and builds its text.

    ``put``/``put_int``/``json`` return WAT instructions that build a JSON object in the JSON buffer;
    ``emit`` hands it to ``edged.output`` (frame-v1) and ``emit_stdout`` writes it to stdout (command).
    """

    def __init__(self) -> None:
        self._data: list[tuple[int, bytes]] = []
        self._next = _CONST_START

    def const(self, data: bytes | str) -> tuple[int, int]:
        raw = data.encode() if isinstance(data, str) else data
        addr = self._next
        self._next += len(raw) + (-len(raw) % 8)
        if self._next > _CONST_END:
            raise ValueError("constant area is full")
        self._data.append((addr, raw))
        return addr, len(raw)

    def ptr_len(self, data: bytes | str) -> str:
        addr, length = self.const(data)
        return f"(i32.const {addr}) (i32.const {length})"

    def put(self, text: str) -> str:
        return f"(call $put {self.ptr_len(text)})"

    def json(self, **fields: str) -> str:
        """Instructions appending ``{"key": <i32 expression>, ...}`` to the JSON buffer."""
        parts = []
        for i, (key, expr) in enumerate(fields.items()):
            prefix = "{" if i == 0 else ","
            parts.append(self.put(f"{prefix}{json.dumps(key)}:"))
            parts.append(f"(call $put_int {expr})")
        parts.append(self.put("}" if fields else "{}"))
        return "\n    ".join(parts)

    def _data_segments(self) -> str:
        return "\n".join(f'  (data (i32.const {addr}) "{_wat_string(raw)}")' for addr, raw in self._data)

    def frame_module(self, run: str, *, version: int = 1, pages: int = 2, locals_: str = "",
                     extra: str = "", exports: str = "", imports: str = "") -> str:
        """A frame-v1 reactor whose ``edged_run(ptr, len)`` body is ``run`` (it must leave an i32)."""
        return f"""(module
{_IMPORTS}
{imports}
  (memory (export "memory") {pages})
{_HELPERS}
  (func (export "edged_abi_version") (result i32) (i32.const {version}))
  (func (export "edged_run") (param $ptr i32) (param $len i32) (result i32) {locals_}
    {run})
{extra}
{exports}
{self._data_segments()}
)"""

    def command_module(self, start: str, *, pages: int = 2, locals_: str = "", extra: str = "") -> str:
        """A WASI command whose ``_start`` body is ``start``."""
        return f"""(module
{_IMPORTS}
  (memory (export "memory") {pages})
{_HELPERS}
  (func (export "_start") {locals_}
    {start})
{extra}
{self._data_segments()}
)"""


def write_wasm(directory: Path, name: str, wat: str) -> Path:
    path = directory / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def raw_frame(raw: bytes, width: int = 1, height: int = 1, fmt: str = "PNG") -> Frame:
    """A Frame with arbitrary raw bytes (for ``input = "raw"`` functions and commands) and grey pixels."""
    return Frame(raw=raw, format=fmt, width=width, height=height, pixels=bytes(width * height * 3))
