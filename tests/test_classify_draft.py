"""Classify on a drafted frame (``max_frame = [224, 224]``, as config/edged.toml ships it) against the full one.

The real photos (tests/data), at the sizes cameras send (resized, JPEG quality 90), through the same pool
twice: once decoded at full size, once drafted. Tolerance: the same top-1 label, and at least 4 of the 5
top labels shared. The guest resizes every frame to 224x224 with a bilinear filter widened to the scale
factor; a draft replaces the first 2-8x of that shrink with libjpeg's scaled IDCT (also an average over
each block), so scores move by a little and a close runner-up may swap. Measured on these 8 cases: the
same top-1 everywhere, its score within 0.013; the same top-5 in 6; in 2 (coffee at 1920x1080 and
2560x1920) one label at rank 5 changed ("soup bowl" -> "eggnog"). The checks leave room for that, no more.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from edged.inference.tflite import ModelRegistry
from edged.settings import FunctionSettings, ModelSettings, PoolSettings
from edged.wasm.host.nn import NnHost
from edged.wasm.pool import FunctionPool
from tests.assets import CLASSIFY_WASM as WASM
from tests.assets import DATA, MODEL_DIR

pytestmark = pytest.mark.timeout(300)

NAME = "efficientnet_lite0"
SIZES = [(640, 480), (1280, 960), (1920, 1080), (2560, 1920)]


def _photo(name: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(DATA / name).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionPool]:
    registry = ModelRegistry({NAME: ModelSettings(path=MODEL_DIR / "efficientnet_lite0.tflite",
                                                  labels=MODEL_DIR / "labels.txt")}, max_interpreters=2)
    functions = {"full": FunctionSettings(module=WASM, models=(NAME,), memory_mb=64),
                 "drafted": FunctionSettings(module=WASM, models=(NAME,), memory_mb=64, max_frame=(224, 224))}
    with registry, FunctionPool(functions, PoolSettings(workers=2, queue=4), tmp_path_factory.mktemp("cache"),
                                extension=NnHost(registry)) as p:
        yield p


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("photo", ["chelsea.jpg", "coffee.jpg"])
def test_a_drafted_frame_keeps_the_top_5(pool: FunctionPool, photo: str, size: tuple[int, int]) -> None:
    data = _photo(photo, size)
    full = pool.decode_and_call_sync(data, 40_000_000, "full").json
    drafted = pool.decode_and_call_sync(data, 40_000_000, "drafted").json
    assert full is not None
    assert drafted is not None
    full_top = [entry["label"] for entry in full["top"]]
    drafted_top = [entry["label"] for entry in drafted["top"]]
    assert drafted_top[0] == full_top[0], (full["top"], drafted["top"])
    assert len(set(full_top) & set(drafted_top)) >= 4, (full["top"], drafted["top"])
    assert drafted["confidence"] == pytest.approx(full["confidence"], abs=0.03)
