"""decode_cost, the memory a decode is admitted with, bounds the measured peak from above, and not loosely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import encode, picture

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "png-rgb": ("RGB", "PNG", {"compress_level": 1}),
    "png-rgba": ("RGBA", "PNG", {"compress_level": 1}),
    "png-palette": ("P", "PNG", {"compress_level": 1}),
    "jpeg": ("RGB", "JPEG", {}),
    "jpeg-progressive-444": ("RGB", "JPEG", {"progressive": True, "subsampling": 0}),
    "jpeg-grey-progressive": ("L", "JPEG", {"progressive": True}),
    "gif": ("P", "GIF", {}),
    "bmp": ("RGB", "BMP", {}),
    "webp": ("RGB", "WEBP", {}),
    "webp-rgba": ("RGBA", "WEBP", {}),
}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("size", [(800, 600), (2000, 1500)])
def test_estimate_is_an_upper_bound_of_the_measured_peak(size: tuple[int, int], tmp_path: Path) -> None:
    paths = []
    for name, (mode, fmt, options) in CASES.items():
        path = tmp_path / name
        path.write_bytes(encode(picture(*size, mode), fmt, **options))
        paths.append(path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "tests.decode_peak", *map(str, paths)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == len(CASES)
    pixels = size[0] * size[1]
    for name, line in zip(CASES, lines, strict=True):
        estimate, peak = map(int, line.split())
        assert peak > 3 * pixels, f"{name}: a decode of {pixels} pixels cannot peak at {peak} bytes"
        assert estimate >= peak, f"{name}: estimate {estimate} below the measured peak {peak}"
        assert estimate < 1.5 * peak + 8 * 2**20, f"{name}: estimate {estimate} far above the peak {peak}"
