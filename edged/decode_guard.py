"""Bounds on one image decode, applied around Pillow by ``edged.frames.decode``.

- ``check_structure``: limits a cheap walk of the file can enforce before Pillow parses anything
  (progressive-JPEG scans, JPEG segments, PNG chunks ahead of the pixels). Pillow has no limit of its
  own there, and each costs it time: ~0.45 ms per empty progressive scan, a Python loop per chunk.
- ``GuardedReader``: the file object Pillow reads from. Pillow's header parsers and its decode loop
  read in pieces (at most ``DECODE_CHUNK`` bytes per decoder step), so checking the deadline and a
  cancel event at every read bounds each step without a second decode path. Steps that read nothing
  are not cut: measured on 40 MP files, a progressive JPEG's output pass (~0.3 s), the RGB conversion
  and packing after the last read (0.16-0.39 s), and WebP, which libwebp decodes in one call (~1.9 s;
  ~47 ms per MP). The memory budget keeps such files rare: WebP costs 19 bytes a pixel.
- ``limit_pillow_text``: Pillow's own PNG text/ICC limits, set once, lower than its defaults.
- ``decode_cost``: an upper bound of the host memory one decode peaks at, from the header alone.
"""

from __future__ import annotations

import io
import re
import threading
import time

from PIL import ImageFile, PngImagePlugin

from edged.errors import DecodeCancelled, DecodeTimeout, ImageTooComplex

__all__ = [
    "DECODE_CHUNK",
    "MAX_JPEG_SCANS",
    "MAX_JPEG_SEGMENTS",
    "MAX_PNG_HEADER_CHUNKS",
    "PNG_MAX_TEXT_CHUNK",
    "PNG_MAX_TEXT_MEMORY",
    "GuardedReader",
    "check_structure",
    "decode_cost",
    "limit_pillow_text",
]

#: Scans in one progressive JPEG. libjpeg's standard progression (what Pillow, libjpeg-turbo's cjpeg
#: and most cameras write) uses 6 scans for grey, 10 for YCbCr and 18 for CMYK; mozjpeg's optimised
#: scripts stay in the same range. 64 leaves room for any real encoder and bounds a scan bomb (each
#: scan costs a pass over every block) at a few dozen milliseconds per megapixel.
MAX_JPEG_SCANS = 64
#: Marker segments (APPn, DQT, DHT, SOF...) ahead of a JPEG's first scan, which Pillow parses one by one
#: in Python. Real files have tens: a large ICC profile is split into 64 KiB APP2 pieces.
MAX_JPEG_SEGMENTS = 1024
#: PNG chunks before the first IDAT (IHDR, PLTE, tRNS, gAMA, iCCP, text...). Pillow parses each in
#: Python when the file is opened, so this bounds the header parse; chunks after it are read during the
#: decode, under the deadline.
MAX_PNG_HEADER_CHUNKS = 1024
#: Largest piece Pillow hands a decoder in one step (its ``ImageFile.MAXBLOCK``, kept). Measured on 40 MP
#: files, the longest step between two checks: baseline JPEG 22 ms, PNG 18 ms, GIF 5 ms.
DECODE_CHUNK = ImageFile.MAXBLOCK
#: One decompressed iCCP/zTXt/iTXt chunk (Pillow's default, kept: real ICC profiles reach ~1 MB).
PNG_MAX_TEXT_CHUNK = 1024 * 1024
#: All text of one PNG together (Pillow's default is 64 MiB, and every byte of it is kept in memory).
PNG_MAX_TEXT_MEMORY = 4 * 1024 * 1024

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A marker: fill bytes, then a code that is neither a stuffed zero nor another fill byte.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
# The end of a scan's entropy-coded data: a marker other than a stuffed zero or a restart marker (a
# fill byte before it matches as the marker's own 0xFF). No repetition: ``\xff+`` made this search 20
# times slower (0.8 s for 20 MB); as written, ~1.7 ms per MB.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_SOS_BYTES = re.compile(rb"\xff\xda")
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def limit_pillow_text() -> None:
    """Lower Pillow's PNG text limits (module globals it reads at every chunk); idempotent."""
    PngImagePlugin.MAX_TEXT_CHUNK = PNG_MAX_TEXT_CHUNK
    PngImagePlugin.MAX_TEXT_MEMORY = PNG_MAX_TEXT_MEMORY


def check_structure(data: bytes) -> None:
    """Raise ImageTooComplex for a JPEG or PNG whose structure alone would make decoding too costly.

    Only counts: a file these walks cannot follow is left to Pillow, which rejects it as corrupt.
    """
    if data.startswith(_JPEG_SOI):
        _check_jpeg(data)
    elif data.startswith(_PNG_SIGNATURE):
        _check_png(data)


def _check_jpeg(data: bytes) -> None:
    first_scan = _jpeg_header_end(data)
    # Entropy-coded data cannot hold the bytes FF DA, so counting them bounds the scans from above in
    # one pass in C (~1 ms per MB; bytes.count is 2.5 times slower on a two-byte needle). Only a file
    # past the limit is walked exactly: bytes after its EOI (a phone's appended video) may hold FF DA.
    if first_scan is None:
        return
    for seen, _match in enumerate(_JPEG_SOS_BYTES.finditer(data, first_scan), 1):
        if seen > MAX_JPEG_SCANS:
            if _jpeg_scans(data, first_scan) > MAX_JPEG_SCANS:
                raise ImageTooComplex(f"progressive JPEG with more than {MAX_JPEG_SCANS} scans")
            return


def _jpeg_header_end(data: bytes) -> int | None:
    """The offset of the first SOS marker, walking the segments Pillow parses in Python; None if none."""
    pos = len(_JPEG_SOI)
    for _ in range(MAX_JPEG_SEGMENTS):
        match = _JPEG_MARKER.match(data, pos)
        if match is None or match.group(1)[0] == _JPEG_EOI:
            return None
        code = match.group(1)[0]
        if code == _JPEG_SOS:
            return match.start()
        pos = match.end()
        if code not in _JPEG_NO_LENGTH:
            pos += int.from_bytes(data[pos:pos + 2], "big")
    raise ImageTooComplex(f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments before its pixels")


def _jpeg_scans(data: bytes, pos: int) -> int:
    """The SOS markers from ``pos`` to EOI, stopping once past the limit."""
    scans = 0
    while scans <= MAX_JPEG_SCANS:
        match = _JPEG_MARKER.match(data, pos)
        if match is None or match.group(1)[0] == _JPEG_EOI:
            break
        code, pos = match.group(1)[0], match.end()
        if code in _JPEG_NO_LENGTH:
            continue
        pos += int.from_bytes(data[pos:pos + 2], "big")
        if code == _JPEG_SOS:
            scans += 1
            end = _JPEG_SCAN_END.search(data, pos)
            if end is None:
                break
            pos = end.start()
    return scans


def _check_png(data: bytes) -> None:
    pos = len(_PNG_SIGNATURE)
    for _ in range(MAX_PNG_HEADER_CHUNKS):
        if pos + 8 > len(data) or data[pos + 4:pos + 8] == b"IDAT":
            return
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    raise ImageTooComplex(f"PNG with more than {MAX_PNG_HEADER_CHUNKS} chunks before its pixels")


class GuardedReader(io.BytesIO):
    """The image's bytes as a file that raises DecodeTimeout or DecodeCancelled at the next read.

    ``deadline`` is a ``time.monotonic()`` value; ``cancel`` is set by another thread (shutdown).
    """

    def __init__(self, data: bytes, deadline: float | None, cancel: threading.Event | None) -> None:
        super().__init__(data)
        self._deadline = deadline
        self._cancel = cancel

    def check(self) -> None:
        """Raise if the decode must stop now."""
        if self._cancel is not None and self._cancel.is_set():
            raise DecodeCancelled("decoding stopped: edged is shutting down")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DecodeTimeout("decoding the image ran past the call's timeout")

    def read(self, size: int | None = -1, /) -> bytes:
        self.check()
        return super().read(size)


# Bytes per pixel of Pillow's image memory by mode (its RGB is 4 bytes a pixel, padded).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 4, "PA": 4, "La": 4}
# Modes Pillow converts to RGB directly; others go through an intermediate 4-byte image.
_DIRECT_TO_RGB = frozenset({"1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "I"})
_PACKED = 3  # the frame's RGB8 pixels
_SLACK = 4 * 1024 * 1024  # decoder state, row buffers, zlib windows: measured well under this


def decode_cost(width: int, height: int, mode: str, fmt: str, *, progressive: bool = False,
                bands: int = 3, file_bytes: int = 0, scale: int = 1) -> int:
    """Upper bound of the host memory ``frames.decode`` peaks at for this header, in bytes.

    The peak is either during the decode (Pillow's image plus the decoder's own buffers) or after it
    (the image, its RGB copy and the packed pixels, alive together). A progressive JPEG keeps every
    DCT coefficient until its last scan (2 bytes per sample and component, before subsampling), at the
    full size even when drafted: DCT scaling shrinks only what the coefficients are turned into;
    libwebp keeps two RGBA canvases, its planes and the frame it returns. ``scale`` is a JPEG draft's
    divisor (1, 2, 4 or 8): the image and what follows it are that much smaller in each dimension. The
    raw bytes are not counted: the caller holds them already.
    """
    pixels = -(-width // scale) * -(-height // scale)
    image = pixels * _MODE_BYTES.get(mode, 4)
    rgb = 0 if mode == "RGB" else pixels * 4 * (1 if mode in _DIRECT_TO_RGB else 2)
    decoder = after_decoder = 0
    if fmt == "JPEG" and progressive:
        decoder = width * height * 2 * bands
    elif fmt == "WEBP":
        decoder, after_decoder = pixels * 14 + file_bytes * 2, pixels * 10
    peak = max(image + decoder, image + after_decoder + rgb + pixels * _PACKED)
    return peak + peak // 16 + _SLACK
