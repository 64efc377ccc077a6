"""Encode a frame result (raw pixels from a guest) as PNG or GIF, within the call's deadline.

Pillow's ``save`` hands the file object its output piece by piece (a PNG in IDAT chunks of at most
``ImageFile.MAXBLOCK``, a GIF in LZW blocks), so a file whose ``write`` checks the deadline stops an encode
between two pieces: the public API, no second encoder. Steps that write nothing are not cut, and are
kept short instead: a GIF needs a palette, and Pillow's default (median cut on an RGB image) took 43 s
for a 16 MP frame; the fast octree quantizer takes 0.38 s (~23 ms per MP), and is not started when the
time left is less than that (the encode could not finish anyway).

``encode_cost`` is the host memory an encode adds to the pixels the caller holds already, for the memory
budget.
"""

from __future__ import annotations

import io
import time

from PIL import Image

from edged.errors import FunctionTimeout

__all__ = ["QUANTIZE_SECONDS_PER_PIXEL", "DeadlineWriter", "encode_cost", "encode_pixels"]

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_GIF = 3  # the GIF source format code (edged.frames.FORMAT_CODES)
#: Pillow stores these modes with as many bytes a pixel as the raw data: ``frombuffer`` shares the bytes.
_SHARED = frozenset({"L", "RGBA"})
_SLACK = 1024 * 1024  # encoder state, zlib windows, the palette
#: Fast octree quantization, measured: 0.38 s for 4000x4000 RGB.
QUANTIZE_SECONDS_PER_PIXEL = 24e-9


class DeadlineWriter(io.BytesIO):
    """An in-memory file that raises FunctionTimeout on a write past ``deadline`` (``time.monotonic()``)."""

    def __init__(self, deadline: float | None, what: str) -> None:
        super().__init__()
        self._deadline = deadline
        self._what = what

    def check(self, need: float = 0.0) -> None:
        """Raise unless ``need`` seconds are left before the deadline."""
        if self._deadline is not None and time.monotonic() + need > self._deadline:
            raise FunctionTimeout(f"{self._what} ran past the call's timeout")

    def write(self, data: bytes, /) -> int:  # type: ignore[override]  # Pillow passes bytes only
        self.check()
        return super().write(data)


def encode_cost(width: int, height: int, channels: int) -> int:
    """Upper bound of the host memory ``encode_pixels`` adds to the pixels it is given, in bytes.

    Pillow's copy of the pixels (RGB is 4 bytes a pixel inside Pillow; L and RGBA are shared), a GIF's
    palette image, and the encoded file, counted twice (the growing buffer and the bytes returned): the
    encoded size of incompressible pixels is about their raw size.
    """
    pixels = width * height
    image = 0 if _MODES.get(channels) in _SHARED else pixels * 4
    return image + pixels + 2 * (pixels * channels + pixels // 64) + _SLACK


def _image(width: int, height: int, channels: int, pixels: bytes) -> Image.Image:
    mode = _MODES.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1, 3 or 4, not {channels}")
    if width <= 0 or height <= 0 or len(pixels) != width * height * channels:
        raise ValueError(f"{len(pixels)} bytes do not make a {width}x{height}x{channels} frame")
    if mode in _SHARED:
        return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)
    return Image.frombytes(mode, (width, height), pixels)


def encode_pixels(width: int, height: int, channels: int, pixels: bytes, source_format: int,
                  deadline: float | None = None) -> tuple[str, bytes]:
    """Encode raw pixels as GIF when the source was GIF, else PNG; return (content type, bytes).

    Raises FunctionTimeout once ``deadline`` has passed (checked before each step and at every write).
    """
    out = DeadlineWriter(deadline, "encoding the result")
    out.check()
    img = _image(width, height, channels, pixels)
    if source_format == _GIF:
        if img.mode != "L":
            out.check(width * height * QUANTIZE_SECONDS_PER_PIXEL)
            img = img.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
            out.check()
        img.save(out, format="GIF")
        return "image/gif", out.getvalue()
    # zlib level 1: ~30% less CPU than level 3 for ~3% larger files; CPU is the scarce thing on the device.
    img.save(out, format="PNG", compress_level=1)
    return "image/png", out.getvalue()
