"""edged.frames and edged.rgb8's packing: the decoded frame's pixels are exactly Pillow's RGB bytes, however
they are packed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edged import rgb8
from edged.frames import decode


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("size", [(1, 1), (5, 4), (451, 300), (3, 2000), (1920, 1080)])
def test_pixels_in_one_piece_equal_tobytes(size: tuple[int, int]) -> None:
    img = _noise(*size, seed=size[0])
    packed = rgb8.rgb_bytes(img)
    assert type(packed) is bytes
    assert packed == img.tobytes()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_decoded_frame_is_pillows_rgb(mode: str) -> None:
    img = _noise(64, 48, seed=7).convert(mode)
    out = io.BytesIO()
    img.save(out, format="PNG")
    frame = decode(out.getvalue(), max_pixels=10_000)
    assert (frame.width, frame.height) == (64, 48)
    assert frame.pixels == img.convert("RGB").tobytes()


class _Unfinished:
    """A raw encoder that stops after part of the frame (as a future Pillow might), for the fallback."""

    def setimage(self, *_args: object) -> None:
        pass

    def encode(self, _bufsize: int) -> tuple[int, int, bytes]:
        return 10, 0, b"\0" * 10

    def cleanup(self) -> None:
        pass


def test_falls_back_to_tobytes_when_pillows_encoder_is_not_as_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    img = _noise(33, 17, seed=3)
    expected = img.tobytes()
    real = Image._getencoder  # noqa: SLF001
    calls: list[str] = []

    def first_one_unfinished(*args: object) -> object:
        calls.append("encoder")
        return _Unfinished() if len(calls) == 1 else real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "_getencoder", first_one_unfinished)
    assert rgb8.rgb_bytes(img) == expected  # noqa: SLF001
    assert len(calls) == 2  # the one-piece attempt, then tobytes


def test_pillows_encoder_is_checked_once_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rgb8.PACK_WHOLE, "the installed Pillow must still offer the one-piece packing"
    monkeypatch.delattr(Image, "_getencoder")
    assert not rgb8._whole_packing_works()  # noqa: SLF001
    monkeypatch.setattr(Image, "_getencoder", lambda *_args: _Unfinished(), raising=False)
    assert not rgb8._whole_packing_works()  # noqa: SLF001


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_without_pillows_encoder_frames_are_packed_by_tobytes(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The fallback as a whole: with the check failed at import, decode never touches the internals."""
    img = _noise(451, 300, seed=11).convert(mode)
    out = io.BytesIO()
    img.save(out, format="PNG")

    def not_used(*_args: object) -> bytes | None:
        raise AssertionError("the one-piece packing was used although the check at import failed")

    monkeypatch.setattr(rgb8, "PACK_WHOLE", False)
    monkeypatch.setattr(rgb8, "_pack_whole", not_used)
    frame = decode(out.getvalue(), max_pixels=1_000_000)
    assert frame.pixels == img.convert("RGB").tobytes()
