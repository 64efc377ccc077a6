"""ABI v1 (docs/ABI.md): errno values, result kinds, the frame header and result validation.

Nothing here touches a Store: results are read through ``edged.wasm.memory.GuestMemory``, so the helpers
serve host imports and the runners alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from edged.frames import FRAME_HEADER, FRAME_MAGIC, sniff_image
from edged.wasm.memory import GuestMemory
from edged.wasm.outcome import slot_setters

__all__ = [
    "ABI_VERSION",
    "HEADER_SIZE",
    "KIND_FRAME",
    "KIND_RAW",
    "Errno",
    "Output",
    "OutputRejected",
    "ResultKind",
    "classify_stdout",
    "pack_header",
    "parse_output",
]

ABI_VERSION = 1
HEADER_SIZE = FRAME_HEADER.size
#: Input kinds in the frame header.
KIND_FRAME = 1
KIND_RAW = 2
_CHANNELS = frozenset({1, 3, 4})


class Errno(IntEnum):
    """The ``edged.*`` imports' errno values (``edged.http_request`` answers their negation)."""

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


def pack_header(kind: int, width: int, height: int, channels: int, source_format: int, length: int) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, kind, width, height, channels, source_format, length, 0)


@dataclass(frozen=True, slots=True, init=False)
class Output:
    """A result as the guest gave it. Frames stay unencoded pixels until the guest's store is gone."""

    kind: ResultKind
    body: bytes
    content_type: str
    json: dict[str, Any] | None = None
    width: int = 0
    height: int = 0
    channels: int = 0

    def __init__(self, kind: ResultKind, body: bytes, content_type: str, json: dict[str, Any] | None = None,
                 width: int = 0, height: int = 0, channels: int = 0) -> None:
        put = _OUTPUT_SLOTS  # frozen all the same (edged.wasm.outcome.slot_setters)
        put[0](self, kind)
        put[1](self, body)
        put[2](self, content_type)
        put[3](self, json)
        put[4](self, width)
        put[5](self, height)
        put[6](self, channels)


_OUTPUT_SLOTS = slot_setters(Output)


class OutputRejected(Exception):
    """The guest offered a result that breaks the ABI; ``errno`` goes back to the guest."""

    def __init__(self, errno: Errno, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


#: What ``json.loads`` decodes with when given no options; called directly, as loads would for bytes, to
#: skip its checks of its arguments on every result.
_DECODER = json.JSONDecoder()
#: The decoder's scanner (an undocumented attribute, checked here; without it every result takes the
#: documented ``decode`` path below). ARCHITECTURE lists it under private APIs.
_SCAN: Callable[[str, int], tuple[Any, int]] | None = getattr(_DECODER, "scan_once", None)
if not callable(_SCAN):
    _SCAN = None
_TRAILING = re.compile(r"[ \t\n\r]*")  # what JSONDecoder.decode allows after the value (json.decoder.WHITESPACE)


def _json_object(data: bytes) -> dict[str, Any] | None:
    if _SCAN is not None and data[:1] == b"{" and (len(data) < 2 or data[1]):
        # What json.detect_encoding would say (UTF-8: no BOM, no NUL in the first two bytes) and decode would
        # do (no leading whitespace to skip), without the calls: most results are small JSON objects.
        try:
            text = data.decode("utf-8", "surrogatepass")
            value, end = _SCAN(text, 0)
        except (UnicodeDecodeError, ValueError, StopIteration):
            return None
        if end != len(text) and _TRAILING.match(text, end).end() != len(text):  # type: ignore[union-attr]
            return None
    else:
        try:
            value = _DECODER.decode(data.decode(json.detect_encoding(data), "surrogatepass"))
        except (UnicodeDecodeError, ValueError):
            return None
    return value if isinstance(value, dict) else None


def parse_output(kind: int, memory: GuestMemory, ptr: int, length: int, *, max_pixels: int = 0,
                 admit: Callable[[int], None] | None = None) -> Output:
    """Validate and copy out a result handed to ``edged.output``; raise OutputRejected naming the problem.

    A frame's header is checked before its pixels are copied, so a bad header (or one over ``max_pixels``,
    when that is not 0) costs 32 bytes, not the frame. ``admit(nbytes)`` runs right before the copy (it
    may raise OutputRejected, e.g. when the memory budget refuses).
    """
    take = admit or (lambda _nbytes: None)
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
        if max_pixels and width * height > max_pixels:
            raise OutputRejected(Errno.TOO_LARGE, f"frame result {width}x{height} is {width * height} pixels; "
                                                  f"the limit is {max_pixels}")
        need = width * height * channels
        if data_len != need or length != HEADER_SIZE + data_len:
            raise OutputRejected(
                Errno.INVALID_ARGUMENT,
                f"frame result {width}x{height}x{channels} needs {need} bytes; the header says {data_len} "
                f"and {length - HEADER_SIZE} were given",
            )
        take(data_len)
        pixels = memory.read(ptr + HEADER_SIZE, data_len)
        return Output(ResultKind.FRAME, pixels, "", width=width, height=height, channels=channels)
    if kind == ResultKind.JSON:
        take(length)
        data = memory.read(ptr, length)
        obj = _json_object(data)
        if obj is None:
            raise OutputRejected(Errno.INVALID_ARGUMENT, "JSON result is not a UTF-8 JSON object")
        return Output(ResultKind.JSON, data, "application/json", json=obj)
    if kind == ResultKind.IMAGE:
        take(length)
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
