"""hypothesis strategies for hostile image bytes: random data, and real small images of every accepted format
mutated the ways decoders get attacked (bit flips, truncation, duplicated pieces, inserted JPEG markers and
scans, declared dimensions far past the pixels sent, PNG chunks declaring huge lengths, GIFs of many frames).

``images()`` draws the bytes; ``SEEDS`` holds the unmutated images, built once.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache
from typing import TypeVar

from hypothesis import strategies as st
from PIL import Image

from tests.images import encode, picture

__all__ = ["DIMENSIONS", "Mutation", "Reader", "from_blob", "images", "mutate", "png_chunk", "seeds"]

T = TypeVar("T")
Mutation = tuple[str, tuple[int | bytes, ...]]

#: Declared widths and heights worth trying: zero, one, the edges of 16- and 32-bit fields.
DIMENSIONS = (0, 1, 2, 255, 256, 4095, 4096, 16383, 16384, 32767, 32768, 65535, 65536, 2**24 - 1, 2**31 - 1,
              2**31, 2**32 - 1)
_JPEG_CODES = (0xC0, 0xC1, 0xC2, 0xC4, 0xCC, 0xD0, 0xD7, 0xD8, 0xD9, 0xDA, 0xDB, 0xDD, 0xE0, 0xE1, 0xE2, 0xEE,
               0xFE, 0x01, 0xFF)
_PNG_KINDS = (b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"iCCP", b"zTXt", b"iTXt", b"tEXt", b"acTL", b"fcTL",
              b"fdAT", b"eXIf", b"sRGB", b"gAMA", b"xxXx")
_MAGICS = (b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"\xff\xd8\xff", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
           b"RIFF\xff\xff\xff\x7fWEBPVP8L", b"RIFF\x00\x01\x00\x00WEBPVP8X", b"%!PS-Adobe-3.0", b"II*\x00", b"")


@cache
def seeds() -> dict[str, bytes]:
    """Small valid images: every accepted format, its common modes and options, animations."""
    size = (24, 16)

    def pic(mode: str, n: int = 0) -> Image.Image:
        return picture(*size, mode, seed=n)

    frames = [pic("P", n) for n in range(4)]
    rgb_frames = [pic("RGB", n) for n in range(3)]
    return {
        "jpeg": encode(pic("RGB"), "JPEG", quality=70),
        "jpeg-progressive": encode(pic("RGB"), "JPEG", progressive=True),
        "jpeg-grey": encode(pic("L"), "JPEG"),
        "jpeg-cmyk": encode(pic("CMYK"), "JPEG", progressive=True),
        "jpeg-restart": encode(pic("RGB"), "JPEG", restart_marker_blocks=1),
        "png-rgb": encode(pic("RGB"), "PNG"),
        "png-rgba": encode(pic("RGBA"), "PNG"),
        "png-palette": encode(pic("P"), "PNG"),
        "png-grey": encode(pic("L"), "PNG"),
        "png-la": encode(pic("LA"), "PNG"),
        "png-16": encode(pic("L").convert("I;16"), "PNG"),
        "png-interlaced": encode(pic("RGB"), "PNG", optimize=False, interlace=1),
        "apng": encode(rgb_frames[0], "PNG", save_all=True, append_images=rgb_frames[1:]),
        "gif": encode(pic("P"), "GIF"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10),
        "bmp": encode(pic("RGB"), "BMP"),
        "bmp-palette": encode(pic("P"), "BMP"),
        "webp": encode(pic("RGB"), "WEBP", quality=50),
        "webp-lossless": encode(pic("RGBA"), "WEBP", lossless=True),
        "webp-animated": encode(rgb_frames[0], "WEBP", save_all=True, append_images=rgb_frames[1:]),
    }


def _at(data: bytes, pos: int) -> int:
    return pos % (len(data) + 1)


def png_chunk(kind: bytes, body: bytes, declared: int | None = None) -> bytes:
    length = len(body) if declared is None else declared
    return struct.pack(">I", length) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_boundaries(data: bytes) -> list[int]:
    """Offsets where a PNG chunk starts (after the signature), as far as the lengths can be followed."""
    pos, found = 8, []
    while pos + 8 <= len(data) and len(found) < 64:
        found.append(pos)
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return found or [min(8, len(data))]


def _dimensions(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its declared size set to ``width`` x ``height`` where the format keeps it."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG") and len(data) >= 33:
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))  # a valid CRC gets past the check
    elif data.startswith(b"GIF") and len(data) >= 10:
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        image = data.find(b"\x2c", 13)
        if image > 0 and image + 9 <= len(data):
            out[image + 5:image + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif data.startswith(b"BM") and len(data) >= 26:
        out[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, height & 0x7FFFFFFF)
    elif data.startswith(b"\xff\xd8"):
        for code in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            sof = data.find(code)
            if sof > 0 and sof + 9 <= len(data):
                out[sof + 5:sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                break
    elif data[8:16] == b"WEBPVP8X" and len(data) >= 30:
        out[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
    return bytes(out)


def _more_scans(data: bytes, count: int) -> bytes:
    """A JPEG with its last scan header repeated ``count`` times before EOI (empty scans: a scan bomb)."""
    last = data.rfind(b"\xff\xda")
    if last < 0 or not data.endswith(b"\xff\xd9"):
        return data
    header = data[last:last + 2 + int.from_bytes(data[last + 2:last + 4], "big")]
    return data[:-2] + header * count + b"\xff\xd9"


def _more_frames(data: bytes, count: int) -> bytes:
    """A GIF with its last frame (from its graphic control extension) repeated ``count`` times."""
    start = data.rfind(b"\x21\xf9\x04")
    if not data.startswith(b"GIF") or start < 0 or not data.endswith(b";"):
        return data
    return data[:-1] + data[start:-1] * count + b";"


def _apply(data: bytes, op: str, args: tuple[int | bytes, ...]) -> bytes:
    ints = [a for a in args if isinstance(a, int)]
    blobs = [a for a in args if isinstance(a, bytes)]
    if op == "flip":
        pos = ints[0] % max(len(data), 1)
        return data[:pos] + bytes([data[pos] ^ (1 << ints[1] % 8)]) + data[pos + 1:] if data else data
    if op == "truncate":
        return data[:_at(data, ints[0])]
    if op == "duplicate":
        start = _at(data, ints[0])
        piece, at = data[start:start + ints[1]], _at(data, ints[2])
        return data[:at] + piece * (1 + ints[3] % 8) + data[at:]
    if op == "insert":
        at = _at(data, ints[0])
        return data[:at] + blobs[0] + data[at:]
    if op == "overwrite":
        at = _at(data, ints[0])
        return data[:at] + blobs[0] + data[at + len(blobs[0]):]
    if op == "marker":  # a JPEG marker segment, its length field as given (often wrong on purpose)
        at = _at(data, ints[0])
        return data[:at] + bytes([0xFF, ints[1]]) + struct.pack(">H", ints[2] & 0xFFFF) + blobs[0] + data[at:]
    if op == "chunk":  # a PNG chunk at a chunk boundary, declaring ``ints[2]`` bytes (or its own length)
        bounds = _png_boundaries(data)
        at = bounds[ints[0] % len(bounds)]
        declared = ints[2] if ints[1] % 2 else None
        return data[:at] + png_chunk(blobs[0], blobs[1], declared) + data[at:]
    if op == "dimensions":
        return _dimensions(data, ints[0], ints[1])
    if op == "scans":
        return _more_scans(data, ints[0])
    if op == "frames":
        return _more_frames(data, ints[0])
    raise ValueError(f"no mutation {op!r}")


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """``data`` with ``mutations`` applied in order."""
    for op, args in mutations:
        data = _apply(data, op, args)
    return data


class Reader:
    """Numbers and bytes read off one hypothesis blob, zeros once it runs out.

    One ``st.binary`` draw per input is far cheaper for hypothesis than many small draws (measured: most
    of a run went into drawing and mutating the choice tree), and its mutations of the blob still reach
    every field below.
    """

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._pos = 0

    def take(self, size: int) -> bytes:
        piece = self._blob[self._pos:self._pos + size]
        self._pos += size
        return piece

    def int(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def pick(self, options: tuple[T, ...]) -> T:
        return options[self.int(1) % len(options)]

    def rest(self) -> bytes:
        return self.take(len(self._blob))


def _position(r: Reader) -> int:
    # Mostly near the start, where headers are; sometimes anywhere.
    return r.int(1) if r.int(1) < 160 else r.int(3)


def _dimension(r: Reader) -> int:
    return r.pick(DIMENSIONS) if r.int(1) < 128 else r.int(3) % 70_000


def _mutation(r: Reader) -> Mutation:
    op = r.pick(_OPS)
    args: tuple[int | bytes, ...]
    if op == "flip":
        args = (_position(r), r.int(1))
    elif op == "truncate":
        args = (_position(r),)
    elif op == "duplicate":
        args = (_position(r), 1 + r.int(2) % 4096, _position(r), r.int(1))
    elif op == "insert":
        args = (_position(r), r.take(r.int(1) % 65))
    elif op == "overwrite":
        args = (_position(r), r.take(1 + r.int(1) % 8))
    elif op == "marker":
        args = (_position(r), r.pick(_JPEG_CODES), r.int(2), r.take(r.int(1) % 65))
    elif op == "chunk":
        args = (r.int(1), r.int(1), r.pick(_PNG_LENGTHS), r.pick(_PNG_KINDS), r.take(r.int(1) % 65))
    elif op == "dimensions":
        args = (_dimension(r), _dimension(r))
    elif op == "scans":
        args = (1 + r.int(1) % 200,)
    else:
        args = (1 + r.int(2) % 2000,)
    return op, args


_OPS = ("flip", "flip", "truncate", "duplicate", "insert", "overwrite", "marker", "chunk", "dimensions",
        "dimensions", "scans", "frames")
_PNG_LENGTHS = (0, 1, 2**16, 2**24, 2**31 - 1, 2**31, 2**32 - 1)


def from_blob(blob: bytes) -> bytes:
    """An input built from ``blob``: random bytes (after a format's magic or not), a seed, or a mutated seed."""
    r = Reader(blob)
    kind = r.int(1) % 8
    if kind == 0:
        return r.pick(_MAGICS) + r.rest()
    table = seeds()
    data = table[r.pick(tuple(table))]
    if kind == 1:
        return data
    return mutate(data, [_mutation(r) for _ in range(1 + r.int(1) % 4)])



def images(max_blob: int = 1024) -> st.SearchStrategy[bytes]:
    """Bytes to decode (see ``from_blob``), one blob drawn per input."""
    return st.binary(min_size=1, max_size=max_blob).map(from_blob)
