"""Decode an ingested image once into a Frame that several functions share; encode image results.

Decoding happens in the pool's worker threads (Pillow releases the GIL while decoding), never on the
event loop. Limits are checked from the header before any pixel is decoded, so a decompression bomb
costs a header parse, not gigabytes.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from edged.errors import BadImage, ImageError, TooManyPixels, UnsupportedFormat

__all__ = [
    "FORMAT_CODES",
    "FRAME_HEADER",
    "FRAME_MAGIC",
    "Frame",
    "decode",
    "encode_pixels",
    "sniff_image",
]

#: Source formats accepted on ingest and their ABI codes (docs/ABI.md).
FORMAT_CODES = {"JPEG": 1, "PNG": 2, "GIF": 3, "BMP": 4, "WEBP": 5}
_FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
FRAME_MAGIC = 0x31464445  # b"EDF1" little endian
#: magic, kind, width, height, channels, source format, data length, reserved
FRAME_HEADER = struct.Struct("<8I")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_MAGICS = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


@dataclass(frozen=True, slots=True)
class Frame:
    """An ingested image: the bytes as received and their RGB8 pixels, decoded once."""

    raw: bytes
    format: str
    width: int
    height: int
    pixels: bytes

    @property
    def format_code(self) -> int:
        return FORMAT_CODES.get(self.format, 0)

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


def decode(data: bytes, *, max_pixels: int) -> Frame:
    """Decode ``data`` into a Frame; raise BadImage, UnsupportedFormat or TooManyPixels."""
    if not data:
        raise BadImage("empty body: expected an image")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImage("not an image (JPEG, PNG, GIF, BMP or WebP expected)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(data, exc) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt image header: {exc}") from exc
    with img:
        fmt = img.format or ""
        if fmt not in FORMAT_CODES:
            raise UnsupportedFormat(f"{fmt or 'this'} images are not supported (JPEG, PNG, GIF, BMP, WebP)")
        width, height = img.size
        if width <= 0 or height <= 0:
            raise BadImage("image has no pixels")
        if width * height > max_pixels:
            raise TooManyPixels(f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}")
        try:
            img.load()  # decoding happens here: a truncated or corrupt image fails now
            # convert() would copy an image that is RGB already (most JPEGs): a frame-sized allocation saved.
            rgb = img if img.mode == "RGB" else img.convert("RGB")
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadImage(f"corrupt {fmt} image: {exc}") from exc
        pixels = _rgb_bytes(rgb)
    return Frame(
        raw=data,
        format=fmt,
        width=width,
        height=height,
        pixels=pixels,
    )


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


def _rgb_bytes(img: Image.Image) -> bytes:
    """``img.tobytes()`` for a loaded RGB image, packed in one piece.

    ``tobytes`` packs in 64 KiB pieces and joins them: a second frame-sized allocation and copy (with
    the pinned mmap threshold, also a second round of page faults). The raw encoder it uses packs the
    whole frame at once when given room for it. Pillow's encoder is internal API, so anything unexpected
    falls back to ``tobytes``.
    """
    size = img.width * img.height * 3
    try:
        encoder = Image._getencoder(img.mode, "raw", img.mode)  # noqa: SLF001 (see above)
        try:
            encoder.setimage(img.im, (0, 0, img.width, img.height))
            _consumed, status, data = encoder.encode(size + 1)
        finally:
            encoder.cleanup()
    except (AttributeError, TypeError, ValueError, OSError):
        return img.tobytes()
    if status != 1 or len(data) != size:  # 1: the encoder finished in this one call
        return img.tobytes()
    return bytes(data)


def encode_pixels(width: int, height: int, channels: int, pixels: bytes, source_format: int) -> tuple[str, bytes]:
    """Encode raw pixels as GIF when the source was GIF, else PNG; return (content type, bytes)."""
    mode = _MODES.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1, 3 or 4, not {channels}")
    if width <= 0 or height <= 0 or len(pixels) != width * height * channels:
        raise ValueError(f"{len(pixels)} bytes do not make a {width}x{height}x{channels} frame")
    img = Image.frombytes(mode, (width, height), pixels)
    out = io.BytesIO()
    if _FORMAT_NAMES.get(source_format) == "GIF":
        img.save(out, format="GIF")
        return "image/gif", out.getvalue()
    # zlib level 1: ~30% less CPU than level 3 for ~3% larger files; CPU is the scarce thing on the device.
    img.save(out, format="PNG", compress_level=1)
    return "image/png", out.getvalue()


def sniff_image(data: bytes) -> str | None:
    """Return the content type of an encoded PNG, GIF or JPEG image, or None."""
    for magic, content_type in _MAGICS:
        if data.startswith(magic):
            return content_type
    return None
