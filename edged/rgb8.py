"""Pack a decoded RGB picture to RGB8 straight into a caller's buffer (a sandbox's linear memory).

Pillow keeps an RGB picture at 4 bytes a pixel. Handing it to a sandbox the old way packs it into a
fresh ``bytes`` (a frame-sized allocation: under the pinned mmap threshold, edged.malloc, one page fault
per 4 KiB, each time) and then copies that into the guest. Measured on the grayscale HTTP path
(640x480): the pack with its 226 faults took 1.16 ms and the copy 0.19 ms of thread CPU; packing into
the guest's memory, which is resident, takes ~0.36 ms.

Without a caller's buffer, ``rgb_bytes`` packs a picture into one ``bytes`` in one piece (Pillow's raw
encoder, checked at import as ``PACK_WHOLE``; ``tobytes`` otherwise), and ``resized_rgb`` resizes first,
with the one resampling the host uses.

The picture's memory is read through the Arrow C data interface that Pillow exports
(``__arrow_c_array__``: a public, stable ABI), and packed with three strided numpy copies. Pillow exports
only a picture held in one block, in the layout checked here; anything else (and any Pillow that fails
the probe at import, ``DIRECT``) makes ``pack_into`` return False, and the caller packs the old way.
"""

from __future__ import annotations

import ctypes
from typing import Protocol

import numpy as np
from PIL import Image

__all__ = ["DIRECT", "PACK_WHOLE", "Picture", "exportable", "pack_into", "packed", "resized_rgb", "rgb_bytes"]


class Picture(Protocol):
    """A loaded picture's pixels as Pillow holds them (``Image.im``): exported through Arrow."""

    def __arrow_c_schema__(self) -> object: ...

    def __arrow_c_array__(self) -> object: ...


class _Schema(ctypes.Structure):
    pass


_Schema._fields_ = [  # noqa: SLF001 (the C data interface's ArrowSchema, declared by ctypes' convention)
    ("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_Schema))), ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]


class _Array(ctypes.Structure):
    pass


_Array._fields_ = [  # noqa: SLF001 (the C data interface's ArrowArray)
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)), ("children", ctypes.POINTER(ctypes.POINTER(_Array))),
    ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)


def _pixels_address(picture: Picture, pixels: int) -> tuple[int, object] | None:
    """Where the ``pixels`` 4-byte pixels start, and the capsule that keeps them exported; None when the
    export is not one plain block of them."""
    try:
        schema_capsule, array_capsule = picture.__arrow_c_schema__(), picture.__arrow_c_array__()
        schema = _Schema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
        array = _Array.from_address(_capsule_pointer(array_capsule, b"arrow_array"))
    except (ValueError, TypeError, AttributeError, OSError):  # e.g. a picture in several blocks
        return None
    # One pixel: a fixed-size list of 4 uint8 (Pillow's RGB, with its pad byte), no nulls, no offset.
    if (schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C"
            or array.length != pixels or array.offset or array.null_count or array.n_children != 1):
        return None
    child = array.children[0].contents
    if child.length != 4 * pixels or child.offset or child.n_buffers != 2 or not child.buffers[1]:
        return None
    return child.buffers[1], array_capsule


def exportable(picture: Picture, pixels: int) -> bool:
    """Whether ``pack_into`` can read this picture of ``pixels`` pixels (Pillow holds it in one block)."""
    return DIRECT and pixels > 0 and _pixels_address(picture, pixels) is not None


def pack_into(picture: Picture, width: int, height: int, dest: ctypes.Array[ctypes.c_ubyte] | bytearray) -> bool:
    """Write ``picture`` (``width`` x ``height``, RGB) as RGB8 into ``dest``, exactly ``3 * width * height``
    bytes long; False (``dest`` untouched) when this picture cannot be read that way."""
    pixels = width * height
    if len(dest) != 3 * pixels:
        raise ValueError(f"a {width}x{height} picture packs to {3 * pixels} bytes, not {len(dest)}")
    return DIRECT and pixels > 0 and _pack(picture, pixels, dest)


def _pack(picture: Picture, pixels: int, dest: ctypes.Array[ctypes.c_ubyte] | bytearray) -> bool:
    found = _pixels_address(picture, pixels)
    if found is None:
        return False
    address, keep = found
    source = np.ctypeslib.as_array((ctypes.c_uint8 * (4 * pixels)).from_address(address)).reshape(pixels, 4)
    target = np.frombuffer(memoryview(dest), dtype=np.uint8).reshape(pixels, 3)
    # One strided copy per channel: numpy copies a 3-of-4 pattern whole ~9x slower (measured, 640x480).
    for channel in range(3):
        target[:, channel] = source[:, channel]
    del keep  # the export (and Pillow's hold on the pixels) ends here
    return True


def packed(picture: Picture, width: int, height: int) -> bytes | None:
    """``picture`` as RGB8 bytes through the same route (``Frame.rgb8`` of a kept picture); None when it
    cannot."""
    out = bytearray(3 * width * height)
    return bytes(out) if pack_into(picture, width, height, out) else None


def _probe_picture() -> Image.Image:
    """The 3x2 RGB picture both checks at import pack and compare with ``tobytes``."""
    probe = Image.new("RGB", (3, 2), (1, 2, 3))
    probe.putpixel((2, 1), (250, 251, 252))
    return probe


def _probe() -> bool:
    """Whether this Pillow exports RGB pictures as ``pack_into`` reads them (checked once, at import)."""
    try:
        probe = _probe_picture()
        out = bytearray(18)
        return _pack(probe.im, 6, out) and bytes(out) == probe.tobytes()
    except Exception:  # noqa: BLE001 (any surprise in Pillow's export means: do not use it)
        return False


#: Whether ``pack_into`` may be used with this Pillow; else it always returns False.
DIRECT = _probe()


# -- packing into a fresh bytes ------------------------------------------------------------------------

def _pack_whole(img: Image.Image, size: int) -> bytes | None:
    """The pixels of a loaded image packed in one piece by Pillow's raw encoder, or None if it did not."""
    encoder = Image._getencoder(img.mode, "raw", img.mode)  # noqa: SLF001 (see rgb_bytes)
    try:
        encoder.setimage(img.im, (0, 0, img.width, img.height))
        _consumed, status, data = encoder.encode(size + 1)
    finally:
        encoder.cleanup()
    if status != 1 or len(data) != size:  # 1: the encoder finished in this one call
        return None
    return bytes(data)


def _whole_packing_works() -> bool:
    """Whether Pillow's private raw encoder still packs as ``rgb_bytes`` expects (checked once, at import)."""
    try:
        probe = _probe_picture()
        packed = _pack_whole(probe, 3 * 2 * 3)
        return packed is not None and packed == probe.tobytes()
    except Exception:  # noqa: BLE001 (any surprise in Pillow's internals means: do not use them)
        return False


#: ``Image._getencoder`` (Pillow internals) packs frames in one piece; else ``tobytes`` does, always.
PACK_WHOLE = _whole_packing_works()


def rgb_bytes(img: Image.Image) -> bytes:
    """``img.tobytes()`` for a loaded RGB image, packed in one piece.

    ``tobytes`` packs in 64 KiB pieces and joins them: a second frame-sized allocation and copy (with
    the pinned mmap threshold, also a second round of page faults). The raw encoder it uses packs the
    whole frame at once when given room for it. That encoder is Pillow's internal API: ``PACK_WHOLE``
    says whether it behaved at import, and without it ``tobytes`` does the work.
    """
    if PACK_WHOLE:
        try:
            data = _pack_whole(img, img.width * img.height * 3)
        except (ValueError, OSError):  # the encoder's own errors: tobytes reports them if they are real
            data = None
        if data is not None:
            return data
    return img.tobytes()


def resized_rgb(img: Image.Image, size: tuple[int, int]) -> bytes:
    """``img`` resized to exactly ``size`` as RGB8: the one resampling the host uses (classify's own, byte for byte)."""
    return rgb_bytes(img.resize(size, Image.Resampling.BILINEAR))
