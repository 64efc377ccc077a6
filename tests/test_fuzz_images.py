"""Fuzzing image ingest: ``frames.decode`` and ``frames.read_header`` on random and mutated images.

For every input: only the typed ImageError subclasses come out, never another exception; a decode ends
within its deadline (plus a generous bound: the steps the deadline cannot cut, a loaded machine); a
successful one has ``width * height * 3`` bytes of pixels, within ``max_pixels``, and agrees with the
header ``read_header`` and ``admit`` saw; a decode whose deadline has passed, or whose cancel event is
set, decodes nothing. Over the whole run the process's peak RSS stays under what the largest allowed
decode may cost plus room for hypothesis itself.

The short run is part of the suite; ``EDGED_FUZZ_EXAMPLES=N`` runs ``N`` inputs (``make fuzz``).
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest
from hypothesis import strategies as st

from edged.decode_guard import decode_cost
from edged.errors import ImageError
from edged.frames import FORMAT_CODES, Frame, ImageHeader, decode, read_header
from tests.fuzzing import LONG_EXAMPLES, Tally, explore, peak_rss_growth, reset_peak_rss
from tests.image_mutations import images, png_chunk, seeds

pytestmark = pytest.mark.timeout(7200 if LONG_EXAMPLES else 300)

SHORT_EXAMPLES = 1000
MAX_PIXELS = 2_000_000
#: The deadline given to most decodes, and the tight ones that cut some decodes short.
DEADLINES = (2.0,) * 6 + (0.005, 0.0005)
#: Past the deadline: Pillow's steps that read nothing (conversion, packing, a WebP decode) are not cut,
#: and other engineers' tests share the two cores.
DEADLINE_SLACK = 3.0
HYPOTHESIS_ROOM = 160 * 1024 * 1024
_MODES = ("1", "L", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F")
#: The most host memory one decode within MAX_PIXELS may cost, by edged's own estimate from the header.
MAX_DECODE_COST = max(decode_cost(MAX_PIXELS, 1, mode, fmt, progressive=True, bands=4, file_bytes=1 << 20)
                      for mode in _MODES for fmt in FORMAT_CODES)
# Refused before any pixel whatever the deadline: the structure walk comes before the first read.
_BEFORE_READING = {"too_complex", "bad_image"}


def _decode(data: bytes, deadline: float, cancel: threading.Event | None = None,
            seen: list[ImageHeader] | None = None) -> Frame | ImageError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in the daemon: Pillow's warnings are not errors there
        try:
            return decode(data, max_pixels=MAX_PIXELS, deadline=deadline, cancel=cancel,
                          admit=seen.append if seen is not None else None)
        except ImageError as exc:
            return exc


def _header(data: bytes) -> ImageHeader | ImageError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_header(data, max_pixels=MAX_PIXELS, deadline=time.monotonic() + 60)
        except ImageError as exc:
            return exc


def check_input(tally: Tally, data: bytes, seconds: float) -> None:
    seen: list[ImageHeader] = []
    started = time.monotonic()
    result = _decode(data, started + seconds, threading.Event(), seen)
    elapsed = time.monotonic() - started
    assert elapsed <= seconds + DEADLINE_SLACK, f"decode took {elapsed:.2f} s with a {seconds} s deadline"
    header = _header(data)
    if isinstance(result, Frame):
        assert result.format in FORMAT_CODES
        assert 0 < result.width * result.height <= MAX_PIXELS
        assert len(result.pixels) == result.width * result.height * 3
        assert isinstance(header, ImageHeader), header
        assert (header.format, header.width, header.height) == (result.format, result.width, result.height)
        assert [(h.width, h.height) for h in seen] == [(result.width, result.height)]
        assert header.decode_cost > len(result.pixels)
        tally.add(f"ok {result.format}")
    else:
        tally.add(result.code)
        assert result.code != "shutting_down"  # its cancel event was never set
    if data:  # an empty body is refused before anything else
        late = _decode(data, time.monotonic() - 1)
        assert isinstance(late, ImageError)
        assert late.code in _BEFORE_READING | {"timeout"}, late
        cancel = threading.Event()
        cancel.set()
        stopped = _decode(data, time.monotonic() + 60, cancel)
        assert isinstance(stopped, ImageError)
        assert stopped.code in _BEFORE_READING | {"shutting_down"}, stopped


def test_every_seed_decodes() -> None:
    """The mutations start from images that decode: a broken seed would leave its format unfuzzed."""
    for name, data in seeds().items():
        frame = _decode(data, time.monotonic() + 60)
        assert isinstance(frame, Frame), (name, frame)
        assert (frame.width, frame.height) == (24, 16), name


@pytest.mark.parametrize("kind", [b"iCCP", b"zTXt", b"iTXt", b"tEXt"])
def test_an_empty_text_chunk_after_the_pixels_is_a_bad_image(kind: bytes) -> None:
    """Found by the fuzzer: Pillow raised IndexError reading an empty iCCP chunk after IDAT (a 500)."""
    png = seeds()["png-rgb"]
    end = png.rindex(b"IEND") - 4
    result = _decode(png[:end] + png_chunk(kind, b"") + png[end:], time.monotonic() + 60)
    if kind == b"iCCP":  # the others Pillow skips, and the image decodes
        assert isinstance(result, ImageError), result
        assert result.code == "bad_image"
    else:
        assert isinstance(result, Frame), result


def test_decoding_hostile_images_fails_typed_in_time_and_memory() -> None:
    tally = Tally("image ingest fuzz")
    base = reset_peak_rss()
    explore(st.tuples(images(), st.sampled_from(DEADLINES)),
            lambda case: check_input(tally, *case), short=SHORT_EXAMPLES)
    growth = peak_rss_growth(base)
    print(f"\n{tally.report()}; peak RSS growth {growth / 2**20:.0f} MiB")
    assert tally.inputs >= min(SHORT_EXAMPLES, LONG_EXAMPLES or SHORT_EXAMPLES)
    assert growth <= MAX_DECODE_COST + HYPOTHESIS_ROOM, f"peak RSS rose {growth / 2**20:.0f} MiB"
    # Every kind of outcome was reached: successes and each refusal the mutations aim at.
    assert {"bad_image", "too_many_pixels", "timeout"} <= set(tally.outcomes), tally.outcomes
    assert sum(n for k, n in tally.outcomes.items() if k.startswith("ok ")) > 0
