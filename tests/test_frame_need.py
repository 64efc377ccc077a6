"""Decoding only what the functions on a frame need: JPEG drafts, their bounds, and who declares the need.

A function declares the smallest frame it works as well from (``max_frame``, or an ``edged.max_frame``
custom section); the host decodes a JPEG at the smallest DCT scaling that still covers the largest need
on the frame. The pixel bound and the structure checks still see the file's full size, and the memory
admitted is what the drafted decode really costs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from edged import decode_guard
from edged.errors import TooManyPixels
from edged.frames import ImageHeader, decode, read_header
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm.need import (
    MAX_FRAME_SECTION,
    NO_PIXELS,
    MaxFrameSectionError,
    combined_need,
    declared_need,
    module_max_frame,
)
from edged.wasm.outcome import FunctionLoadError
from edged.wasm.pool import FunctionPool
from tests.assets import GRAYSCALE_WASM as GRAY
from tests.assets import REPO
from tests.images import encode, picture

BIG = 10**9


def _jpeg(width: int, height: int, **options: object) -> bytes:
    return encode(picture(width, height), "JPEG", **options)


@pytest.mark.parametrize(("size", "need", "expected", "scale"), [
    ((640, 480), (224, 224), (320, 240), 2),
    ((1920, 1080), (224, 224), (480, 270), 4),
    ((1921, 1081), (224, 224), (481, 271), 4),  # rounded up, never below the need
    ((2000, 2000), (224, 224), (250, 250), 8),
    ((447, 300), (224, 224), (447, 300), 1),  # 447 // 224 = 1: no scaling fits
    ((640, 480), (400, 100), (640, 480), 1),
    ((640, 480), (1, 1), (80, 60), 8),
])
def test_a_jpeg_is_drafted_to_the_smallest_scaling_that_covers_the_need(
        size: tuple[int, int], need: tuple[int, int], expected: tuple[int, int], scale: int) -> None:
    frame = decode(_jpeg(*size), max_pixels=BIG, need=need)
    assert (frame.width, frame.height, frame.scale) == (*expected, scale)
    assert len(frame.pixels) == expected[0] * expected[1] * 3
    assert frame.width >= min(need[0], size[0])
    assert frame.height >= min(need[1], size[1])


def test_without_a_need_or_for_other_formats_the_full_size_is_decoded() -> None:
    assert (decode(_jpeg(640, 480), max_pixels=BIG).width, decode(_jpeg(640, 480), max_pixels=BIG).scale) == (640, 1)
    png = encode(picture(640, 480), "PNG", compress_level=1)
    frame = decode(png, max_pixels=BIG, need=(8, 8))
    assert (frame.width, frame.height, frame.scale) == (640, 480, 1)


def test_a_drafted_frame_looks_like_the_full_one_scaled_down() -> None:
    data = encode(Image.open(REPO / "tests" / "data" / "coffee.jpg").resize((1200, 800)), "JPEG", quality=90)
    drafted = decode(data, max_pixels=BIG, need=(224, 224))
    full = Image.open(io.BytesIO(data)).convert("RGB").reduce(drafted.scale)
    assert (drafted.width, drafted.height) == full.size == (600, 400)  # 800 // 224 = 3: half
    mine = Image.frombytes("RGB", full.size, drafted.pixels)
    diff = sum(abs(a - b) for a, b in zip(mine.tobytes(), full.tobytes(), strict=True)) / len(drafted.pixels)
    assert diff < 4, f"mean difference {diff:.2f} per sample"


def test_the_pixel_bound_applies_to_the_full_size_not_the_draft() -> None:
    data = _jpeg(2000, 2000)  # 4 MP, drafted to 250x250 (62,500 pixels)
    with pytest.raises(TooManyPixels):
        decode(data, max_pixels=1_000_000, need=(1, 1))
    with pytest.raises(TooManyPixels):
        read_header(data, max_pixels=1_000_000, need=(1, 1))


@pytest.mark.parametrize("progressive", [False, True])
def test_admission_sees_the_full_header_and_the_drafted_cost(progressive: bool) -> None:
    data = _jpeg(1920, 1080, progressive=progressive)
    seen: list[ImageHeader] = []
    frame = decode(data, max_pixels=BIG, need=(224, 224), admit=seen.append)
    [header] = seen
    assert (header.width, header.height, header.scale, header.progressive) == (1920, 1080, 4, progressive)
    assert read_header(data, max_pixels=BIG, need=(224, 224)) == header
    full = read_header(data, max_pixels=BIG)
    assert full.scale == 1
    assert header.decode_cost < full.decode_cost
    assert header.decode_cost > len(frame.pixels)
    # A progressive JPEG keeps every DCT coefficient of the full size until its last scan, drafted or not.
    coefficients = 1920 * 1080 * 2 * 3
    assert (header.decode_cost > coefficients) == progressive
    assert header.decode_cost == decode_guard.decode_cost(1920, 1080, "RGB", "JPEG", progressive=progressive,
                                                          file_bytes=len(data), scale=4)


# -- who declares the need ---------------------------------------------------------------------------------

def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _with_section(wasm: bytes, name: str, content: bytes) -> bytes:
    body = _leb(len(name)) + name.encode() + content
    return wasm + b"\x00" + _leb(len(body)) + body


def test_the_module_section_is_read_and_the_setting_wins(tmp_path: Path) -> None:
    wasm = _with_section(_with_section(GRAY.read_bytes(), "other", b"1x1"), MAX_FRAME_SECTION, b"224x224")
    assert module_max_frame(GRAY.read_bytes()) is None
    assert module_max_frame(wasm) == (224, 224)
    module = tmp_path / "gray.wasm"
    module.write_bytes(wasm)
    assert declared_need(FunctionSettings(module=module)) == (224, 224)
    assert declared_need(FunctionSettings(module=module, max_frame=(64, 32))) == (64, 32)
    assert declared_need(FunctionSettings(module=GRAY)) is None
    assert declared_need(FunctionSettings(module=GRAY, input="raw")) == NO_PIXELS
    for bad in (b"224", b"0x10", b"axb", b"\xff"):
        with pytest.raises(MaxFrameSectionError):
            module_max_frame(_with_section(GRAY.read_bytes(), MAX_FRAME_SECTION, bad))


def test_the_largest_need_wins_and_any_full_size_need_means_full_size() -> None:
    assert combined_need([(224, 224), (100, 300)]) == (224, 300)
    assert combined_need([(224, 224), None]) is None
    assert combined_need([NO_PIXELS, (224, 224)]) == (224, 224)
    assert combined_need([]) is None


def _png_size(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as img:
        return img.size


def test_the_pool_decodes_once_at_the_largest_need_of_the_frames_functions(tmp_path: Path) -> None:
    functions = {"small": FunctionSettings(module=GRAY, memory_mb=64, max_frame=(100, 100)),
                 "medium": FunctionSettings(module=GRAY, memory_mb=64, max_frame=(300, 100)),
                 "full": FunctionSettings(module=GRAY, memory_mb=64)}
    data = _jpeg(1600, 1200)

    async def run(names: list[str]) -> list[tuple[int, int]]:
        frame, results = await pool.decode_and_call_each(data, BIG, names)
        sizes = [_png_size(r.body) for r in results if not isinstance(r, Exception)]
        assert len(sizes) == len(names)
        assert all(size == (frame.width, frame.height) for size in sizes)
        return [(frame.width, frame.height)]

    with FunctionPool(functions, PoolSettings(workers=2, queue=4), tmp_path / "cache") as pool:
        assert asyncio.run(run(["small"])) == [(200, 150)]  # 1/8
        assert asyncio.run(run(["small", "medium"])) == [(400, 300)]  # 1600 // 300 = 5: a quarter
        assert asyncio.run(run(["small", "full"])) == [(1600, 1200)]
        assert _png_size(pool.decode_and_call_sync(data, BIG, "small").body) == (200, 150)


def test_a_malformed_section_fails_the_function_at_load(tmp_path: Path) -> None:
    module = tmp_path / "bad.wasm"
    module.write_bytes(_with_section(GRAY.read_bytes(), MAX_FRAME_SECTION, b"big"))
    pool = FunctionPool({"bad": FunctionSettings(module=module)}, PoolSettings(workers=1), tmp_path / "cache")
    with pytest.raises(FunctionLoadError, match="edged.max_frame must be WIDTHxHEIGHT"):
        pool.start()
    # The setting wins: the section is then not read at all.
    with FunctionPool({"bad": FunctionSettings(module=module, max_frame=(8, 8))}, PoolSettings(workers=1),
                      tmp_path / "cache"):
        pass


def test_the_pipelines_calls_carry_digests_made_on_the_worker(tmp_path: Path) -> None:
    """Asked for (the pipeline, with a store), the payload's and an encoded result's SHA-256 come from the worker."""
    data = _jpeg(64, 48)
    with FunctionPool({"gray": FunctionSettings(module=GRAY, memory_mb=64)}, PoolSettings(workers=2, queue=4),
                      tmp_path / "cache") as pool:
        frame, result = asyncio.run(pool.decode_and_call(data, BIG, "gray", digests=True))
        assert not isinstance(result, Exception)
        assert frame.sha256 == hashlib.sha256(data).hexdigest()
        assert result.sha256 == hashlib.sha256(result.body).hexdigest()
        frame, results = asyncio.run(pool.decode_and_call_each(data, BIG, ["gray", "gray"], digests=True,
                                                            sha256="known"))
        assert frame.sha256 == "known"
        assert [r.sha256 for r in results if not isinstance(r, Exception)] == [result.sha256] * 2
        assert asyncio.run(pool.decode_and_call(data, BIG, "gray"))[0].sha256 == ""  # not asked: not hashed
        assert pool.decode_and_call_sync(data, BIG, "gray").sha256 == ""  # `edged invoke` has no use for it
