"""edged.rgb8: a decoded picture packed straight into a sandbox's memory is byte for byte the old pack, and
the sandbox's bounds and memory limit hold as they did."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from edged import rgb8
from edged.errors import FunctionError
from edged.frames import decode
from edged.settings import FunctionSettings, PoolSettings
from edged.wasm import rawstore
from edged.wasm.pool import CallResult, FunctionPool
from tests.assets import CHELSEA, GRAYSCALE_WASM
from tests.wat import BUMP_ALLOC, write_wasm

pytestmark = pytest.mark.timeout(60)

MAX_PIXELS = 50_000_000
# edged_run hands its input (header and pixels) back as its frame result; edged_alloc is a bump allocator
# that grows the memory, or returns 0 when it cannot. "nearend" returns a pointer 64 bytes before the end
# of its memory: the header fits there, the pixels do not.
ECHO = """
(module
  (import "edged" "output" (func $output (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
""" + BUMP_ALLOC + """  (func (export "edged_run") (param $ptr i32) (param $len i32) (result i32)
    (call $output (local.get $ptr) (local.get $len) (i32.const 3))))
"""
NEAR_END = ECHO.replace("(local.get $p))\n  (func (export \"edged_run\")",
                        "(i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 64)))\n"
                        "  (func (export \"edged_run\")")


def jpeg(size: tuple[int, int], *, noise: bool = False) -> bytes:
    with Image.open(CHELSEA) as img:
        picture = img.convert("RGB").resize(size)
    if noise:  # random bytes: every value in every channel, no pattern for a pack to get right by chance
        rng = random.Random(7)  # noqa: S311 (test pixels, not secrets)
        picture = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    picture.save(out, "PNG" if noise else "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(params=[True, False], ids=["raw", "public-api"])
def pool(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionPool]:
    """Echo functions on both call paths, plus the shipped grayscale."""
    if not request.param:
        monkeypatch.setattr(rawstore, "FAST", False)
    functions = {
        "echo": FunctionSettings(module=write_wasm(tmp_path, "echo", ECHO), memory_mb=4),
        "nearend": FunctionSettings(module=write_wasm(tmp_path, "nearend", NEAR_END), memory_mb=8),
        "grayscale": FunctionSettings(module=GRAYSCALE_WASM, memory_mb=64),
    }
    with FunctionPool(functions, PoolSettings(workers=1, queue=2), tmp_path / "cache") as started:
        yield started


def run(pool: FunctionPool, name: str, data: bytes, *, direct: bool) -> CallResult | FunctionError:
    """Decode and call in one hand-off, the runner packing the picture itself (``direct``) or not."""
    runner = pool._table.runners[name]  # noqa: SLF001 (switch the one path under test)
    runner.packs_pictures = direct
    frame, outcome = asyncio.run(pool.decode_and_call(data, MAX_PIXELS, name))
    assert (frame.picture is not None) is direct  # the path asked for is the one taken
    assert (frame.pixels == b"") is direct
    return outcome


def test_the_module_probe_passes_with_the_pinned_pillow() -> None:
    assert rgb8.DIRECT


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (7, 5), (1, 1)])
def test_packed_is_pillows_own_pack(size: tuple[int, int]) -> None:
    for noise in (False, True):
        with Image.open(io.BytesIO(jpeg(size, noise=noise))) as img:
            img.load()
            assert rgb8.packed(img.im, *size) == img.tobytes()


def test_a_buffer_of_another_size_is_refused() -> None:
    img = Image.new("RGB", (4, 3))
    with pytest.raises(ValueError, match="36 bytes"):
        rgb8.pack_into(img.im, 4, 3, bytearray(35))


def test_a_picture_in_several_blocks_is_packed_the_old_way(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg((320, 240))
    block_size = Image.core.get_block_size()
    Image.core.set_block_size(4096)  # Pillow then holds a 320x240 RGB picture in 75 blocks
    try:
        frame = decode(data, max_pixels=MAX_PIXELS, keep=True)
    finally:
        Image.core.set_block_size(block_size)
    assert frame.picture is None
    assert frame.pixels == decode(data, max_pixels=MAX_PIXELS).pixels


def test_a_kept_picture_is_the_same_frame() -> None:
    data = jpeg((640, 480))
    kept, packed = decode(data, max_pixels=MAX_PIXELS, keep=True), decode(data, max_pixels=MAX_PIXELS)
    assert kept.pixels == b""
    assert kept.rgb8() == packed.pixels == packed.rgb8()
    assert kept.pixel_bytes == 4 * 640 * 480  # what the memory budget keeps reserved for it
    assert kept.at_size((100, 80)).pixels == packed.at_size((100, 80)).pixels


@pytest.mark.parametrize("noise", [False, True], ids=["photo", "noise"])
def test_the_guest_gets_the_same_bytes_either_way(pool: FunctionPool, noise: bool) -> None:
    data = jpeg((640, 480), noise=noise)
    direct, old = run(pool, "echo", data, direct=True), run(pool, "echo", data, direct=False)
    assert isinstance(direct, CallResult)
    assert isinstance(old, CallResult)
    assert direct.body == old.body
    with Image.open(io.BytesIO(data)) as img, Image.open(io.BytesIO(direct.body)) as echoed:
        assert echoed.convert("RGB").tobytes() == img.convert("RGB").tobytes()


def test_grayscale_answers_the_same_png(pool: FunctionPool) -> None:
    data = jpeg((640, 480))
    direct, old = run(pool, "grayscale", data, direct=True), run(pool, "grayscale", data, direct=False)
    assert isinstance(direct, CallResult)
    assert isinstance(old, CallResult)
    assert direct.body == old.body
    with Image.open(io.BytesIO(data)) as img:
        native = io.BytesIO()
        img.convert("L").save(native, "PNG", compress_level=1)
    assert direct.body == native.getvalue()


def test_a_buffer_too_close_to_the_end_is_refused_before_any_pixel(pool: FunctionPool) -> None:
    data = jpeg((64, 48))
    for direct in (True, False):
        outcome = run(pool, "nearend", data, direct=direct)
        assert isinstance(outcome, FunctionError)
        assert outcome.code == "function_error"
        assert f"edged_alloc({32 + 64 * 48 * 3}) returned" in outcome.detail
        assert "outside the guest's 65536 bytes" in outcome.detail


def test_the_memory_limit_still_applies(pool: FunctionPool) -> None:
    data = jpeg((1920, 1080))  # 6.2 MB of pixels: more than echo's 4 MiB
    small = jpeg((1280, 720))  # 2.8 MB: fits
    for direct in (True, False):
        outcome = run(pool, "echo", data, direct=direct)
        assert isinstance(outcome, FunctionError)
        assert outcome.code == "memory_limit"
        assert f"edged_alloc({32 + 1920 * 1080 * 3})" in outcome.detail
        assert isinstance(run(pool, "echo", small, direct=direct), CallResult)
