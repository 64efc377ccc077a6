"""Images built in memory for tests: realistic content in every format, and hostile ones (bombs)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = ["encode", "picture", "png_with_chunks", "scan_bomb"]


def picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradients with some noise: compresses like a photo, unlike pure noise or flat colour."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    base = ((x[None, :] * 3 + y[:, None] * 2) % 256).astype(np.uint8)
    noise = np.random.default_rng(seed).integers(0, 24, (height, width), dtype=np.uint8)
    channels = [base ^ noise, base[::-1], (base // 2) + noise, 255 - base]
    img = Image.fromarray(np.stack(channels, axis=-1), "RGBA")
    # From RGB, not RGBA: a palette image made from RGBA carries transparency Pillow warns about.
    return img if mode == "RGBA" else img.convert("RGB").convert(mode)


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def scan_bomb(extra_scans: int, size: tuple[int, int] = (256, 256)) -> bytes:
    """A real progressive JPEG with ``extra_scans`` empty scans (a repeated SOS header, 10 bytes) before EOI."""
    data = encode(picture(*size), "JPEG", progressive=True, quality=80)
    last = data.rindex(b"\xff\xda")
    header = data[last:last + 2 + int.from_bytes(data[last + 2:last + 4], "big")]
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + header * extra_scans + b"\xff\xd9"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_chunks(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """``png`` with ``chunks`` ((type, body) pairs) inserted right after IHDR."""
    ihdr_end = 8 + 12 + int.from_bytes(png[8:12], "big")
    return png[:ihdr_end] + b"".join(_chunk(kind, body) for kind, body in chunks) + png[ihdr_end:]
