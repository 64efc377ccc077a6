"""ABI v1 (docs/ABI.md): errno values, result kinds, the frame header and bounds-checked guest memory.

Nothing here touches a Store beyond the memory accessor, so the helpers are usable from host imports
(with a ``Caller``) and from the pool (with the ``Store``) alike.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import wasmtime

from edged.frames import FRAME_HEADER, FRAME_MAGIC, sniff_image

__all__ = [
    "ABI_VERSION",
    "HEADER_SIZE",
    "KIND_FRAME",
    "KIND_RAW",
    "U32",
    "Errno",
    "GuestMemory",
    "GuestMemoryError",
    "Output",
    "OutputRejected",
    "ResultKind",
    "classify_stdout",
    "pack_header",
    "parse_output",
    "u32",
]

ABI_VERSION = 1
HEADER_SIZE = FRAME_HEADER.size
U32 = 0xFFFF_FFFF
#: Input kinds in the frame header.
KIND_FRAME = 1
KIND_RAW = 2
_CHANNELS = frozenset({1, 3, 4})


class Errno(IntEnum):
    OK = 0
    INVALID_ARGUMENT = 1
    DENIED = 2
    ALREADY_SET = 3
    IO_ERROR = 5
    TOO_LARGE = 7
    NOT_FOUND = 8


class ResultKind(IntEnum):
    JSON = 1
    IMAGE = 2
    FRAME = 3


def u32(value: int) -> int:
    """Wasm i32 values arrive signed; pointers and lengths are unsigned."""
    return value & U32


def pack_header(kind: int, width: int, height: int, channels: int, source_format: int, length: int) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, kind, width, height, channels, source_format, length, 0)


class GuestMemoryError(ValueError):
    """A guest pointer/length pair lies outside the guest's memory."""


class GuestMemory:
    """Bounds-checked access to an exported linear memory; the base address is re-read on every access
    because ``memory.grow`` may move it."""

    __slots__ = ("_memory", "_store")

    def __init__(self, memory: wasmtime.Memory, store: wasmtime.Store | wasmtime.Caller) -> None:
        self._memory = memory
        self._store = store

    @classmethod
    def of_caller(cls, caller: wasmtime.Caller) -> GuestMemory | None:
        memory = caller.get("memory")
        return cls(memory, caller) if isinstance(memory, wasmtime.Memory) else None

    @property
    def size(self) -> int:
        return int(self._memory.data_len(self._store))

    def _address(self, ptr: int, length: int) -> int:
        if ptr < 0 or length < 0 or ptr + length > self.size:
            raise GuestMemoryError(f"{length} bytes at {ptr:#x} are outside the guest's {self.size} bytes")
        return ctypes.addressof(self._memory.data_ptr(self._store).contents) + ptr

    def check(self, ptr: int, length: int) -> None:
        """Raise GuestMemoryError unless ``length`` bytes at ``ptr`` lie inside the memory."""
        self._address(ptr, length)

    def read(self, ptr: int, length: int) -> bytes:
        address = self._address(ptr, length)
        return ctypes.string_at(address, length) if length else b""

    def write(self, ptr: int, data: bytes | bytearray) -> None:
        address = self._address(ptr, len(data))
        if not data:
            return
        if isinstance(data, bytearray):
            ctypes.memmove(address, (ctypes.c_char * len(data)).from_buffer(data), len(data))
        else:
            ctypes.memmove(address, data, len(data))

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, (value & U32).to_bytes(4, "little"))


@dataclass(frozen=True, slots=True)
class Output:
    """A result as the guest gave it. Frames stay unencoded pixels until the guest's store is gone."""

    kind: ResultKind
    body: bytes
    content_type: str
    json: dict[str, Any] | None = None
    width: int = 0
    height: int = 0
    channels: int = 0


class OutputRejected(Exception):
    """The guest offered a result that breaks the ABI; ``errno`` goes back to the guest."""

    def __init__(self, errno: Errno, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def parse_output(kind: int, memory: GuestMemory, ptr: int, length: int) -> Output:
    """Validate and copy out a result handed to ``edged.output``; raise OutputRejected naming the problem.

    A frame's header is checked before its pixels are copied, so a bad header costs 32 bytes, not the frame.
    """
    if kind == ResultKind.FRAME:
        if length < HEADER_SIZE:
            raise OutputRejected(Errno.INVALID_ARGUMENT, f"frame result of {length} bytes has no header")
        magic, fkind, width, height, channels, _fmt, data_len, _ = FRAME_HEADER.unpack(
            memory.read(ptr, HEADER_SIZE))
        if magic != FRAME_MAGIC or fkind != KIND_FRAME:
            raise OutputRejected(Errno.INVALID_ARGUMENT, "frame result header: bad magic or kind (want EDF1, 1)")
        if channels not in _CHANNELS or width == 0 or height == 0:
            raise OutputRejected(Errno.INVALID_ARGUMENT,
                                 f"frame result {width}x{height}x{channels}: channels must be 1, 3 or 4")
        need = width * height * channels
        if data_len != need or length != HEADER_SIZE + data_len:
            raise OutputRejected(
                Errno.INVALID_ARGUMENT,
                f"frame result {width}x{height}x{channels} needs {need} bytes; the header says {data_len} "
                f"and {length - HEADER_SIZE} were given",
            )
        pixels = memory.read(ptr + HEADER_SIZE, data_len)
        return Output(ResultKind.FRAME, pixels, "", width=width, height=height, channels=channels)
    if kind == ResultKind.JSON:
        data = memory.read(ptr, length)
        obj = _json_object(data)
        if obj is None:
            raise OutputRejected(Errno.INVALID_ARGUMENT, "JSON result is not a UTF-8 JSON object")
        return Output(ResultKind.JSON, data, "application/json", json=obj)
    if kind == ResultKind.IMAGE:
        data = memory.read(ptr, length)
        content_type = sniff_image(data)
        if content_type is None:
            raise OutputRejected(Errno.INVALID_ARGUMENT, "image result is not PNG, GIF or JPEG (unknown magic)")
        return Output(ResultKind.IMAGE, data, content_type)
    raise OutputRejected(Errno.INVALID_ARGUMENT, f"unknown result kind {kind}")


def classify_stdout(data: bytes) -> Output:
    """A command's stdout: an image when it starts with PNG/GIF/JPEG magic, JSON when it is a JSON object."""
    if not data:
        raise OutputRejected(Errno.INVALID_ARGUMENT, "no output on stdout")
    content_type = sniff_image(data)
    if content_type is not None:
        return Output(ResultKind.IMAGE, data, content_type)
    obj = _json_object(data)
    if obj is None:
        raise OutputRejected(Errno.INVALID_ARGUMENT, "stdout is neither a JSON object nor a PNG, GIF or JPEG image")
    return Output(ResultKind.JSON, data, "application/json", json=obj)
