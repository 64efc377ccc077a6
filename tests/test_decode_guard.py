"""edged.frames.decode under hostile input: structure limits, deadline, cancellation, Pillow's text limits.

Valid images decode to exactly Pillow's RGB pixels, as before the guards.
"""

from __future__ import annotations

import io
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from edged import decode_guard, frames
from edged.decode_guard import DECODE_CHUNK, MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, MAX_PNG_HEADER_CHUNKS
from edged.errors import BadImage, DecodeCancelled, DecodeTimeout, ImageTooComplex, Overloaded
from edged.frames import ImageHeader, decode, read_header
from tests.images import encode, picture, png_with_chunks, scan_bomb

DATA = Path(__file__).parent / "data"
BIG = 10**9

CASES = {
    "jpeg": ("RGB", "JPEG", {}),
    "jpeg-progressive": ("RGB", "JPEG", {"progressive": True}),
    "jpeg-444": ("RGB", "JPEG", {"progressive": True, "subsampling": 0}),
    "jpeg-grey": ("L", "JPEG", {}),
    "jpeg-cmyk": ("CMYK", "JPEG", {"progressive": True}),
    "png-rgb": ("RGB", "PNG", {}),
    "png-rgba": ("RGBA", "PNG", {}),
    "png-grey": ("L", "PNG", {}),
    "png-palette": ("P", "PNG", {}),
    "png-la": ("LA", "PNG", {}),
    "gif": ("P", "GIF", {}),
    "bmp": ("RGB", "BMP", {}),
    "webp": ("RGB", "WEBP", {}),
    "webp-lossless-rgba": ("RGBA", "WEBP", {"lossless": True}),
}


def _pillow_rgb(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").tobytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_valid_images_decode_to_pillows_pixels(case: str) -> None:
    mode, fmt, options = CASES[case]
    data = encode(picture(173, 91, mode, seed=len(case)), fmt, **options)
    frame = decode(data, max_pixels=BIG, deadline=time.monotonic() + 60, cancel=threading.Event())
    assert (frame.format, frame.width, frame.height) == (fmt, 173, 91)
    assert frame.pixels == _pillow_rgb(data)


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.jpg"])
def test_sample_photos_decode_to_pillows_pixels(name: str) -> None:
    data = (DATA / name).read_bytes()
    assert decode(data, max_pixels=BIG, deadline=time.monotonic() + 60).pixels == _pillow_rgb(data)


def test_scan_limit_admits_real_progressions_and_refuses_one_more() -> None:
    plain = encode(picture(64, 64), "JPEG", progressive=True)
    scans = plain.count(b"\xff\xda")
    assert scans == 10  # libjpeg's standard progression for YCbCr
    assert decode(scan_bomb(MAX_JPEG_SCANS - scans), max_pixels=BIG).width == 256
    with pytest.raises(ImageTooComplex, match="scans") as caught:
        decode(scan_bomb(MAX_JPEG_SCANS - scans + 1), max_pixels=BIG)
    assert (caught.value.code, caught.value.http_status) == ("too_complex", 422)


def test_scan_bomb_is_refused_before_pillow_spends_time_on_it() -> None:
    bomb = scan_bomb(100_000)  # ~1 MB; Pillow spends about 0.1-0.45 ms on each empty scan
    start = time.perf_counter()
    with pytest.raises(ImageTooComplex):
        decode(bomb, max_pixels=BIG, deadline=time.monotonic() + 60)
    refused_in = time.perf_counter() - start
    assert refused_in < 0.05, f"refused in {refused_in * 1000:.1f} ms"
    small = scan_bomb(3000)
    start = time.perf_counter()
    with Image.open(io.BytesIO(small)) as img:
        img.load()
    assert time.perf_counter() - start > 10 * refused_in  # what the limit saves, at 3 % of the bomb


def test_bytes_after_the_end_of_the_image_are_not_counted_as_scans() -> None:
    data = encode(picture(64, 48), "JPEG", progressive=True) + b"\xff\xda\x00\x08" * (MAX_JPEG_SCANS * 4)
    assert decode(data, max_pixels=BIG).pixels == _pillow_rgb(data)


def test_jpeg_segment_flood_before_the_pixels_is_refused() -> None:
    data = encode(picture(32, 32), "JPEG")

    def with_comments(count: int) -> bytes:
        return data[:2] + b"\xff\xfe\x00\x03x" * count + data[2:]

    assert decode(with_comments(MAX_JPEG_SEGMENTS // 2), max_pixels=BIG).width == 32
    with pytest.raises(ImageTooComplex, match="segments"):
        decode(with_comments(MAX_JPEG_SEGMENTS), max_pixels=BIG)


def test_png_chunk_flood_before_the_pixels_is_refused() -> None:
    png = encode(picture(32, 32), "PNG")
    few = png_with_chunks(png, [(b"teXt", b"x")] * 100)
    assert decode(few, max_pixels=BIG).pixels == _pillow_rgb(png)
    with pytest.raises(ImageTooComplex, match="chunks"):
        decode(png_with_chunks(png, [(b"teXt", b"x")] * MAX_PNG_HEADER_CHUNKS), max_pixels=BIG)


def test_png_text_is_bounded_cheaply() -> None:
    png = encode(picture(32, 32), "PNG")
    huge_text = png_with_chunks(png, [(b"tEXt", b"comment\0" + b"a" * (8 << 20))])
    zip_bomb = png_with_chunks(png, [(b"zTXt", b"comment\0\0" + zlib.compress(bytes(32 << 20), 1))])
    for data, reason in ((huge_text, "Too much memory used in text chunks"), (zip_bomb, "too large")):
        start = time.perf_counter()
        with pytest.raises(BadImage, match=reason):
            decode(data, max_pixels=BIG)
        assert time.perf_counter() - start < 1.0
    # Below the limits, text is fine.
    text = png_with_chunks(png, [(b"tEXt", b"comment\0" + b"a" * 1000)])
    assert decode(text, max_pixels=BIG).pixels == _pillow_rgb(png)


class _Spy(decode_guard.GuardedReader):
    """Records how far into the file Pillow read."""

    furthest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        _Spy.furthest = max(_Spy.furthest, self.tell())
        return chunk


def test_only_the_first_gif_frame_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    first, *rest = (picture(200, 150, seed=seed).convert("P") for seed in range(40))
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=rest)
    data = out.getvalue()
    monkeypatch.setattr(frames, "GuardedReader", _Spy)
    _Spy.furthest = 0
    frame = decode(data, max_pixels=BIG)
    assert frame.pixels == _pillow_rgb(data)
    assert _Spy.furthest < len(data) // 10, f"read {_Spy.furthest} of {len(data)} bytes"


@pytest.mark.parametrize("case", ["jpeg", "png-rgb", "gif", "bmp", "webp"])
def test_a_passed_deadline_stops_the_decode(case: str) -> None:
    mode, fmt, options = CASES[case]
    data = encode(picture(64, 64, mode), fmt, **options)
    with pytest.raises(DecodeTimeout) as caught:
        decode(data, max_pixels=BIG, deadline=time.monotonic() - 0.001)
    assert (caught.value.code, caught.value.http_status) == ("timeout", 504)


class _CountingEvent(threading.Event):
    """Counts how often the decode checks it; reports "set" from check number ``fire_at`` on."""

    def __init__(self, fire_at: int) -> None:
        super().__init__()
        self.checks = 0
        self._fire_at = fire_at

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self._fire_at or super().is_set()


def test_the_decode_is_checked_between_steps_of_at_most_one_chunk() -> None:
    data = encode(picture(1500, 1000, "RGBA"), "PNG", compress_level=1)
    never = _CountingEvent(fire_at=10**9)
    decode(data, max_pixels=BIG, cancel=never)
    assert never.checks >= len(data) // DECODE_CHUNK > 20
    midway = _CountingEvent(fire_at=never.checks // 2)
    with pytest.raises(DecodeCancelled) as caught:
        decode(data, max_pixels=BIG, cancel=midway)
    assert (caught.value.code, caught.value.http_status) == ("shutting_down", 503)


class _HeldEvent(threading.Event):
    """Once the decode is under way (third check), says so and waits until another thread sets it."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self._checks = 0

    def is_set(self) -> bool:
        self._checks += 1
        if self._checks == 3:
            self.reached.set()
            self.wait(10)
        return super().is_set()


def test_another_thread_can_cancel_a_decode_in_progress() -> None:
    data = encode(picture(1500, 1000), "JPEG")
    cancel = _HeldEvent()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(decode(data, max_pixels=BIG, cancel=cancel))
        except DecodeCancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert cancel.reached.wait(10)
    cancel.set()
    worker.join(10)
    assert not worker.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], DecodeCancelled)


def test_a_deadline_stops_a_long_decode_early() -> None:
    data = encode(picture(2000, 1500, "RGBA"), "PNG", compress_level=1)
    start = time.perf_counter()
    decode(data, max_pixels=BIG)
    full = time.perf_counter() - start
    start = time.perf_counter()
    with pytest.raises(DecodeTimeout):
        decode(data, max_pixels=BIG, deadline=time.monotonic() + full / 10)
    assert time.perf_counter() - start < full / 2


def test_header_and_admission_come_before_any_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(picture(640, 480), "JPEG", progressive=True)
    header = read_header(data, max_pixels=BIG)
    assert header == ImageHeader(format="JPEG", width=640, height=480, mode="RGB", progressive=True,
                                 bands=3, file_bytes=len(data))
    assert header.decode_cost == decode_guard.decode_cost(640, 480, "RGB", "JPEG", progressive=True,
                                                          file_bytes=len(data))
    seen: list[ImageHeader] = []
    frame = decode(data, max_pixels=BIG, admit=seen.append)
    assert seen == [header]
    assert frame.width == 640

    def refuse(_header: ImageHeader) -> None:
        raise Overloaded("no memory now")

    monkeypatch.setattr(frames, "GuardedReader", _Spy)
    _Spy.furthest = 0
    with pytest.raises(Overloaded):
        decode(data, max_pixels=BIG, admit=refuse)
    assert _Spy.furthest < data.index(b"\xff\xda") + 1024  # the header and no more
