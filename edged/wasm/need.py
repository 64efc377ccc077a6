"""How large a frame each function needs, and so how small the host may decode a frame they share.

A function declares the smallest frame it works as well from: the ``max_frame`` setting, else the
module's ``edged.max_frame`` custom section (UTF-8 ``WIDTHxHEIGHT``, e.g. ``224x224``), else nothing,
which means the full size. A function taking the raw bytes (``input = "raw"``) reads no pixels: it asks
for none. A frame shared by several functions is decoded once, at the largest of their needs
(``edged.frames.decode`` turns that into a JPEG draft). A function with ``resize = "bilinear"`` gets
its frame resized to exactly its ``max_frame`` by the host, once per size from the one decoded frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edged.frames import Frame, FrameNeed, Size
from edged.settings import FunctionSettings

__all__ = ["FULL_FRAME", "MAX_FRAME_SECTION", "NO_PIXELS", "FramePlan", "MaxFrameSectionError", "combined_need",
           "declared_need", "frame_for", "frame_plan", "host_size", "module_max_frame"]

#: The custom section a module declares its ``max_frame`` in.
MAX_FRAME_SECTION = "edged.max_frame"
#: The need of a function that reads no pixels: any draft will do.
NO_PIXELS: FrameNeed = (1, 1)
_WASM_MAGIC = b"\0asm"
_MAX_SIDE = 65535


@dataclass(frozen=True, slots=True)
class FramePlan:
    """How to decode a frame for some functions (``edged.frames.decode``'s arguments): the smallest size
    they can work from, the sizes the host resizes it to, and whether any takes the pixels as decoded."""

    need: FrameNeed
    resize_to: tuple[Size, ...]
    full: bool


#: A frame decoded at full size for whoever asks (``FunctionPool.decode``).
FULL_FRAME = FramePlan(None, (), True)


class MaxFrameSectionError(ValueError):
    """The module's ``edged.max_frame`` section is not ``WIDTHxHEIGHT``."""


def declared_need(settings: FunctionSettings, wasm: bytes | None = None) -> FrameNeed:
    """What one function needs: its setting, else its module's section (``wasm``: the module's bytes,
    read from ``settings.module`` when not given). Raises MaxFrameSectionError, OSError."""
    if settings.max_frame is not None:
        return settings.max_frame
    if settings.input == "raw":
        return NO_PIXELS
    return module_max_frame(settings.module.read_bytes() if wasm is None else wasm)


def combined_need(needs: Iterable[FrameNeed]) -> FrameNeed:
    """The frame every function of ``needs`` can work from: None (full size) when any needs it."""
    width = height = 0
    for need in needs:
        if need is None:
            return None
        width, height = max(width, need[0]), max(height, need[1])
    return (width, height) if width and height else None


def host_size(settings: FunctionSettings) -> Size | None:
    """The size the host resizes a function's frames to (``resize``), or None: it takes them as decoded."""
    return settings.max_frame if settings.resize != "none" else None


def frame_plan(functions: Iterable[tuple[FunctionSettings, FrameNeed]]) -> FramePlan:
    """The plan for one frame shared by ``functions`` (each with its declared need)."""
    functions = list(functions)
    sizes = [host_size(settings) for settings, _need in functions]
    resize_to = tuple(dict.fromkeys(size for size in sizes if size is not None))
    return FramePlan(combined_need(need for _settings, need in functions), resize_to, None in sizes)


def frame_for(settings: FunctionSettings, frame: Frame) -> Frame:
    """The frame as the function gets it: resized to its size when it asks the host for that."""
    size = host_size(settings)
    return frame if size is None else frame.at_size(size)


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise MaxFrameSectionError("truncated module")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def module_max_frame(wasm: bytes) -> FrameNeed:
    """The ``edged.max_frame`` custom section of a binary module, or None; raise MaxFrameSectionError.

    Walks the section headers only (a text-format module, or one too short to be binary, has none).
    """
    if not wasm.startswith(_WASM_MAGIC):
        return None
    pos = 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, pos = _leb128(wasm, pos + 1)
        end = pos + size
        if section_id == 0:
            name_len, name_at = _leb128(wasm, pos)
            if wasm[name_at:name_at + name_len] == MAX_FRAME_SECTION.encode():
                return _parse(wasm[name_at + name_len:end])
        pos = end
    return None


def _parse(content: bytes) -> FrameNeed:
    try:
        width, height = (int(side) for side in content.decode("ascii").strip().split("x"))
    except ValueError as exc:
        raise MaxFrameSectionError(f"{MAX_FRAME_SECTION} must be WIDTHxHEIGHT, not {content[:40]!r}") from exc
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE):
        raise MaxFrameSectionError(f"{MAX_FRAME_SECTION} sides must be 1 to {_MAX_SIDE}, not {width}x{height}")
    return width, height
