"""Decode an ingested image once into a Frame that several functions share (results: edged.encode).

Decoding happens in the pool's worker threads (Pillow releases the GIL while decoding), never on the
event loop. Limits are checked from the header before any pixel is decoded, so a decompression bomb
costs a header parse, not gigabytes; the file's structure (scans, chunks) is checked before that, and
the deadline and cancellation between decoder steps (edged.decode_guard).
"""

from __future__ import annotations

import dataclasses
import io
import struct
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from edged.decode_guard import GuardedReader, check_structure, decode_cost, limit_pillow_text
from edged.errors import BadImage, ImageError, TooManyPixels, UnsupportedFormat
from edged.rgb8 import Picture, exportable, packed, resized_rgb, rgb_bytes

__all__ = [
    "FORMAT_CODES",
    "FRAME_HEADER",
    "FRAME_MAGIC",
    "Frame",
    "FrameNeed",
    "ImageHeader",
    "Size",
    "decode",
    "read_header",
    "sniff_image",
]

limit_pillow_text()  # Pillow reads these limits at every PNG text chunk: set before any decode

#: Source formats accepted on ingest and their ABI codes (docs/ABI.md).
FORMAT_CODES = {"JPEG": 1, "PNG": 2, "GIF": 3, "BMP": 4, "WEBP": 5}
# What Pillow raises for a corrupt file while decoding: IndexError and struct.error too (Image.open treats
# them as corrupt as well), e.g. an empty iCCP chunk after the pixels (found by tests/test_fuzz_images.py).
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
FRAME_MAGIC = 0x31464445  # b"EDF1" little endian
#: magic, kind, width, height, channels, source format, data length, reserved
FRAME_HEADER = struct.Struct("<8I")
_MAGICS = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
)
#: The smallest (width, height) every function on a frame can work from; None: the full size.
FrameNeed = tuple[int, int] | None
#: A (width, height) the host resizes a frame to for a function (``resize = "bilinear"``).
Size = tuple[int, int]
_DRAFT_SCALES = (8, 4, 2)  # the DCT scalings libjpeg offers through Pillow's draft


@dataclass(frozen=True, slots=True)
class Frame:
    """An ingested image: the bytes as received and their RGB8 pixels, decoded once.

    ``scale`` is the divisor a JPEG draft decoded it at (1: the full size, else 2, 4 or 8): the pixels are
    ``width`` x ``height``, the file's own size divided by ``scale`` and rounded up.
    """

    raw: bytes
    format: str
    width: int
    height: int
    pixels: bytes
    scale: int = 1
    #: Hex SHA-256 of ``raw`` when the pool hashed it on the worker (the pipeline's decodes), else "".
    sha256: str = ""
    #: The pixels resized (Pillow's bilinear) to the sizes ``decode`` was asked for, as (size, RGB8) pairs.
    #: ``pixels`` is empty when no function needed them as decoded.
    resized: tuple[tuple[Size, bytes], ...] = ()
    #: The decoded picture as Pillow holds it (4 bytes a pixel), kept instead of ``pixels`` when ``decode``
    #: was asked to (``keep``): a sandbox packs it straight into its memory (edged.rgb8), see ``rgb8``.
    picture: Picture | None = None

    @property
    def pixel_bytes(self) -> int:
        """The bytes of pixels it holds, at every size."""
        held = 4 * self.width * self.height if self.picture is not None else 0
        return held + len(self.pixels) + sum(len(pixels) for _, pixels in self.resized)

    def rgb8(self) -> bytes:
        """The pixels as decoded, RGB8: ``pixels``, else packed from the kept ``picture`` now."""
        if self.pixels or self.picture is None:
            return self.pixels
        pixels = packed(self.picture, self.width, self.height)
        if pixels is None:  # decode keeps only a picture edged.rgb8 reads
            raise RuntimeError("the kept picture could not be packed")
        return pixels

    def at_size(self, size: Size) -> Frame:
        """This frame resized to exactly ``size``: the one ``decode`` made, else resized from ``pixels`` now."""
        for have, pixels in self.resized:
            if have == size:
                return dataclasses.replace(self, width=size[0], height=size[1], pixels=pixels, resized=())
        if (self.width, self.height) == size:
            return dataclasses.replace(self, resized=())
        if not self.pixels and self.picture is None:
            raise ValueError(f"this frame was decoded for other sizes than {size[0]}x{size[1]} only")
        img = Image.frombytes("RGB", (self.width, self.height), self.rgb8())
        return dataclasses.replace(self, width=size[0], height=size[1], resized=(), pixels=resized_rgb(img, size),
                                   picture=None)

    @property
    def format_code(self) -> int:
        return FORMAT_CODES.get(self.format, 0)

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says about an image, before any pixel is decoded."""

    format: str
    width: int
    height: int
    mode: str
    progressive: bool
    bands: int
    file_bytes: int
    #: The JPEG draft's divisor the pixels will be decoded at (1: the full ``width`` x ``height``).
    scale: int = 1
    #: What the resized copies ``decode`` makes hold at their peak (Pillow's 4 bytes a pixel, then packed).
    resize_bytes: int = 0

    @property
    def decode_cost(self) -> int:
        """Upper bound of the host memory decoding it peaks at, in bytes (``decode_guard.decode_cost``)."""
        return self.resize_bytes + decode_cost(self.width, self.height, self.mode, self.format, scale=self.scale,
                                               progressive=self.progressive, bands=self.bands,
                                               file_bytes=self.file_bytes)


def read_header(data: bytes, *, max_pixels: int, deadline: float | None = None,
                cancel: threading.Event | None = None, need: FrameNeed = None) -> ImageHeader:
    """Parse the header only: the checks ``decode`` makes before decoding, and what it would cost."""
    with _open(data, GuardedReader(data, deadline, cancel), max_pixels) as img:
        size = img.size
        return _header(img, len(data), size, _draft(img, need))


def decode(data: bytes, *, max_pixels: int, deadline: float | None = None,
           cancel: threading.Event | None = None,
           admit: Callable[[ImageHeader], None] | None = None, need: FrameNeed = None,
           resize_to: Collection[Size] = (), full: bool = True, keep: bool = False) -> Frame:
    """Decode ``data`` into a Frame; raise BadImage, UnsupportedFormat, TooManyPixels or ImageTooComplex.

    ``deadline`` (a ``time.monotonic()`` value) and ``cancel`` (set from another thread) are checked
    between decoder steps of at most ``DECODE_CHUNK`` bytes: past the deadline the decode raises
    DecodeTimeout, once cancelled DecodeCancelled. ``admit`` is called with the header after the
    checks and before any pixel is decoded; it may raise (to refuse) or reserve memory. ``need``: a JPEG
    at least twice that size in both dimensions is decoded smaller (DCT scaling), never below it; the
    pixel limit and the structure checks apply to the file's full size all the same. ``resize_to``: sizes the
    frame also gets its pixels at (``Frame.resized``), resized once here; without ``full`` only those.
    ``keep``: hold the full-size picture as Pillow decoded it (``Frame.picture``) instead of packing it
    into ``pixels``, when edged.rgb8 can read it; the one sandbox it goes to packs it into its memory.
    """
    reader = GuardedReader(data, deadline, cancel)
    with _open(data, reader, max_pixels) as img:
        fmt = img.format or ""
        size = img.size
        scale = _draft(img, need)
        if admit is not None:
            admit(_header(img, len(data), size, scale, _resize_peak(resize_to, img.size)))
        try:
            img.load()  # decoding happens here: a truncated or corrupt image fails now
            reader.check()
            # convert() would copy an image that is RGB already (most JPEGs): a frame-sized allocation saved.
            rgb = img if img.mode == "RGB" else img.convert("RGB")
        except _CORRUPT as exc:
            raise BadImage(f"corrupt {fmt} image: {exc}") from exc
        resized = tuple((s, resized_rgb(rgb, s)) for s in dict.fromkeys(resize_to))
        picture = rgb.im if full and keep and exportable(rgb.im, rgb.width * rgb.height) else None
        pixels = rgb_bytes(rgb) if full and picture is None else b""
    return Frame(raw=data, format=fmt, width=img.width, height=img.height, pixels=pixels, scale=scale, resized=resized,
                 picture=picture)


def _resize_peak(sizes: Collection[Size], decoded: Size) -> int:
    """What resizing a ``decoded``-sized frame to ``sizes`` holds at most: Pillow's pass between the two
    filters and its result (4 bytes a pixel each), and the packed copy (3)."""
    width, height = decoded
    return sum(4 * max(w * height, width * h) + 7 * w * h for w, h in sizes)


def _draft(img: Image.Image, need: FrameNeed) -> int:
    """Set a JPEG to decode at the smallest DCT scaling that still covers ``need``; return its divisor.

    Only after ``_open``'s checks on the full size. Pillow's ``draft`` picks the scaling the same way
    (the largest of 8, 4, 2 not above the smaller ratio of the two sides); it is asked only when one fits.
    """
    if need is None or img.format != "JPEG":
        return 1
    width, height = img.size
    factor = min(width // max(1, need[0]), height // max(1, need[1]))
    if factor < min(_DRAFT_SCALES):
        return 1
    try:
        drafted = img.draft(None, need)
    except (OSError, ValueError):  # a header Pillow cannot scale: decode it whole
        return 1
    if drafted is None:  # more than one tile: Pillow decodes such a file whole
        return 1
    return round(width / drafted[1][2])


def _open(data: bytes, reader: GuardedReader, max_pixels: int) -> Image.Image:
    """Open the image read from ``reader`` (holding ``data``), header only, and check it; the caller closes it."""
    if not data:
        raise BadImage("empty body: expected an image")
    check_structure(data)
    try:
        img = Image.open(reader)
    except UnidentifiedImageError as exc:
        raise BadImage("not an image (JPEG, PNG, GIF, BMP or WebP expected)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(data, exc) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt image header: {exc}") from exc
    try:
        fmt = img.format or ""
        if fmt not in FORMAT_CODES:
            raise UnsupportedFormat(f"{fmt or 'this'} images are not supported (JPEG, PNG, GIF, BMP, WebP)")
        width, height = img.size
        if width <= 0 or height <= 0:
            raise BadImage("image has no pixels")
        if width * height > max_pixels:
            raise TooManyPixels(f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}")
    except BaseException:
        img.close()
        raise
    return img


def _header(img: Image.Image, file_bytes: int, size: tuple[int, int], scale: int, resize_bytes: int = 0) -> ImageHeader:
    """The header: ``size`` as read from the file, before ``img`` was drafted to ``scale``."""
    progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    width, height = size
    return ImageHeader(format=img.format or "", width=width, height=height, mode=img.mode,
                       progressive=progressive, bands=len(img.getbands()), file_bytes=file_bytes, scale=scale,
                       resize_bytes=resize_bytes)


def _bomb_error(data: bytes, exc: Exception) -> ImageError:
    """What to answer when Pillow's own pixel bound fires in ``Image.open``, before the format is known.

    An image too large in a format edged does not take (an EPS with a vast BoundingBox) is a 415, as any
    image in that format is; only one in an accepted format is ``too_many_pixels``. Told apart by opening
    the header again with only the accepted formats allowed.
    """
    try:
        with Image.open(io.BytesIO(data), formats=tuple(FORMAT_CODES)):
            pass
    except UnidentifiedImageError:
        return UnsupportedFormat("this image format is not supported (JPEG, PNG, GIF, BMP, WebP)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, SyntaxError, ValueError):
        pass
    return TooManyPixels(str(exc))


def sniff_image(data: bytes) -> str | None:
    """Return the content type of an encoded PNG, GIF or JPEG image, or None."""
    for magic, content_type in _MAGICS:
        if data.startswith(magic):
            return content_type
    return None
