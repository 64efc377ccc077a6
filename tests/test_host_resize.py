"""``resize = "bilinear"``: the host hands a function its frame already at its ``max_frame`` size.

The host resizes with Pillow's bilinear filter, which is what classify does itself in the guest
(functions/classify/src/resize.rs, byte for byte), so classify's results do not move: checked on the real
photos against the guest's own resize and against the model called natively. Several functions on one
frame each get their own size from the one decode; the frame's memory is held until the last call.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from edged.budget import MemoryBudget
from edged.frames import decode
from edged.inference.tflite import ModelRegistry, load_backend
from edged.settings import FunctionSettings, ModelSettings, PoolSettings
from edged.wasm.host.nn import NnHost
from edged.wasm.need import frame_plan
from edged.wasm.pool import FunctionPool
from tests.assets import CLASSIFY_WASM as CLASSIFY
from tests.assets import DATA, LABELS, MODEL
from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.configs import PRELOAD_MODELS
from tests.pools import call_sync

pytestmark = pytest.mark.timeout(300)

NAME = "efficientnet_lite0"
BIG = 40_000_000


def _photo(name: str, variant: str) -> bytes:
    """A real photo as it is, or as a camera or another source would send it."""
    if variant == "as-is":
        return (DATA / name).read_bytes()
    img = Image.open(DATA / name).convert("RGB")
    out = io.BytesIO()
    if variant == "portrait":  # the guest's vertical pass goes first
        img.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=90)
    elif variant == "small-png":  # upscaled to 224x224
        img.resize((180, 120), Image.Resampling.BICUBIC).save(out, "PNG")
    else:
        width, height = (int(side) for side in variant.split("x"))
        img.resize((width, height), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


# -- the frame ------------------------------------------------------------------------------------------------

def test_decode_resizes_with_pillows_bilinear_and_may_skip_the_full_pixels() -> None:
    data = _photo("coffee.jpg", "as-is")
    frame = decode(data, max_pixels=BIG, resize_to=[(224, 224), (64, 48), (224, 224)], full=False)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert frame.pixels == b""
    assert (frame.width, frame.height) == img.size  # what was decoded, as before
    assert [size for size, _ in frame.resized] == [(224, 224), (64, 48)]
    for size in ((224, 224), (64, 48)):
        sized = frame.at_size(size)
        assert (sized.width, sized.height) == size
        assert sized.pixels == img.resize(size, Image.Resampling.BILINEAR).tobytes()
    assert frame.pixel_bytes == (224 * 224 + 64 * 48) * 3
    with pytest.raises(ValueError, match="decoded for other sizes"):
        frame.at_size((100, 100))


def test_a_frame_without_that_size_is_resized_from_its_pixels() -> None:
    data = _photo("chelsea.jpg", "as-is")
    frame = decode(data, max_pixels=BIG)
    sized = frame.at_size((50, 40))
    assert sized.pixels == Image.open(io.BytesIO(data)).convert("RGB").resize(
        (50, 40), Image.Resampling.BILINEAR).tobytes()
    assert frame.at_size((frame.width, frame.height)).pixels == frame.pixels


def test_resize_needs_a_size_and_a_decoded_frame() -> None:
    with pytest.raises(ValidationError, match="resize needs"):
        FunctionSettings(module=CLASSIFY, resize="bilinear")
    with pytest.raises(ValidationError, match="resize needs"):
        FunctionSettings(module=CLASSIFY, resize="bilinear", max_frame=(224, 224), input="raw")
    assert FunctionSettings(module=CLASSIFY, resize="bilinear", max_frame=(224, 224)).resize == "bilinear"


def test_the_plan_decodes_once_for_everyone() -> None:
    plain = FunctionSettings(module=GRAYSCALE)
    small = FunctionSettings(module=CLASSIFY, max_frame=(224, 224), resize="bilinear")
    tiny = FunctionSettings(module=CLASSIFY, max_frame=(64, 48), resize="bilinear")
    both = frame_plan([(small, (224, 224)), (tiny, (64, 48)), (small, (224, 224))])
    assert (both.need, both.resize_to, both.full) == ((224, 224), ((224, 224), (64, 48)), False)
    shared = frame_plan([(plain, None), (small, (224, 224))])
    assert (shared.need, shared.resize_to, shared.full) == (None, ((224, 224),), True)


# -- classify on the real photos ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionPool]:
    registry = ModelRegistry({NAME: ModelSettings(path=MODEL, labels=LABELS, preload=PRELOAD_MODELS)},
                             max_interpreters=2)
    functions = {
        "guest": FunctionSettings(module=CLASSIFY, models=(NAME,), memory_mb=64, max_frame=(224, 224)),
        "host": FunctionSettings(module=CLASSIFY, models=(NAME,), memory_mb=64, max_frame=(224, 224),
                                 resize="bilinear"),
        "gray": FunctionSettings(module=GRAYSCALE, memory_mb=64),
        "gray-small": FunctionSettings(module=GRAYSCALE, memory_mb=64, max_frame=(64, 48), resize="bilinear"),
    }
    with registry, FunctionPool(functions, PoolSettings(workers=2, queue=8), tmp_path_factory.mktemp("cache"),
                                extension=NnHost(registry), budget=MemoryBudget(1 << 30)) as p:
        yield p


@pytest.fixture(scope="module")
def native() -> Any:
    """The model called directly on a 224x224 RGB picture."""
    interpreter = load_backend("auto").factory(model_content=MODEL.read_bytes(), num_threads=1)
    interpreter.allocate_tensors()

    def scores(rgb224: Image.Image) -> np.ndarray[Any, np.dtype[np.float32]]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(rgb224, np.float32)[None])
        interpreter.invoke()
        out: np.ndarray[Any, np.dtype[np.float32]] = interpreter.get_tensor(
            interpreter.get_output_details()[0]["index"])[0]
        return out

    return scores


VARIANTS = ["as-is", "portrait", "small-png", "640x480", "1920x1080"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("photo", ["chelsea.jpg", "coffee.jpg"])
def test_classify_keeps_its_top_5_and_scores(pool: FunctionPool, native: Any, photo: str, variant: str) -> None:
    """The host's resize gives the guest's result (same top 5, scores within the native tolerance), and both
    are the model's natively on the same decoded (drafted) picture resized by Pillow."""
    data = _photo(photo, variant)
    guest = pool.decode_and_call_sync(data, BIG, "guest").json
    host = pool.decode_and_call_sync(data, BIG, "host").json
    assert guest is not None
    assert host is not None
    assert [e["label"] for e in host["top"]] == [e["label"] for e in guest["top"]]
    for mine, theirs in zip(host["top"], guest["top"], strict=True):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    decoded = Image.open(io.BytesIO(data))
    decoded.draft("RGB", (224, 224))  # the same DCT scaling edged picks for max_frame = [224, 224]
    scores = native(decoded.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    labels = LABELS.read_text().splitlines()
    order = np.argsort(-scores, kind="stable")[:5]
    assert [e["label"] for e in host["top"]] == [labels[i] for i in order]
    for entry, i in zip(host["top"], order, strict=True):
        assert entry["score"] == pytest.approx(float(scores[i]), abs=1e-5)


# -- several functions on one frame ------------------------------------------------------------------------------

def _png_size(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as img:
        return img.size


def _results(pool: FunctionPool, data: bytes, names: list[str]) -> tuple[Any, list[Any]]:
    async def run() -> tuple[Any, list[Any]]:
        return await pool.decode_and_call_each(data, BIG, names)

    return asyncio.run(run())


def test_each_function_on_a_frame_gets_its_own_size(pool: FunctionPool) -> None:
    data = _photo("coffee.jpg", "640x480")
    frame, (gray, small, host) = _results(pool, data, ["gray", "gray-small", "host"])
    assert (frame.width, frame.height) == (640, 480)  # gray needs it whole: no draft
    assert len(frame.pixels) == 640 * 480 * 3
    assert _png_size(gray.body) == (640, 480)
    assert _png_size(small.body) == (64, 48)
    assert host.json["label"] == "espresso"
    assert pool.budget.stats().in_use == 0  # the frame and every size of it were given back


def test_a_frame_only_resized_functions_read_is_not_kept_whole(pool: FunctionPool) -> None:
    data = _photo("chelsea.jpg", "1920x1080")
    frame, (small, host) = _results(pool, data, ["gray-small", "host"])
    assert frame.pixels == b""
    assert frame.scale == 4  # drafted for the larger of the two needs, 224x224
    assert _png_size(small.body) == (64, 48)
    assert host.json["label"] == "Egyptian cat"
    assert pool.budget.stats().in_use == 0


def test_a_call_on_a_frame_decoded_elsewhere_still_gets_its_size(pool: FunctionPool) -> None:
    frame = decode(_photo("coffee.jpg", "as-is"), max_pixels=BIG)
    assert _png_size(call_sync(pool, "gray-small", frame).body) == (64, 48)
