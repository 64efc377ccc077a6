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


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_estimate_of_a_drafted_jpeg_bounds_its_peak(tmp_path: Path) -> None:
    """Drafted to 1/8, a baseline JPEG costs a fraction; a progressive one still holds full-size coefficients.

    4:4:4 as in CASES: the estimate counts a coefficient per sample of every component, what 4:4:4 holds
    (4:2:0 holds half as many, so the bound is looser there, never below).
    """
    cases = {"jpeg": {}, "jpeg-progressive-444": {"progressive": True, "subsampling": 0}}
    args = []
    for name, options in cases.items():
        path = tmp_path / name
        path.write_bytes(encode(picture(4000, 3000), "JPEG", **options))
        args += [f"{path}@224x224", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "tests.decode_peak", *args], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    figures = [tuple(map(int, line.split())) for line in out.splitlines()]
    assert len(figures) == 2 * len(cases)
    for i, name in enumerate(cases):
        (drafted_estimate, drafted_peak), (full_estimate, full_peak) = figures[2 * i:2 * i + 2]
        assert drafted_estimate >= drafted_peak, f"{name}: estimate {drafted_estimate} below the peak {drafted_peak}"
        assert drafted_estimate < 1.5 * drafted_peak + 8 * 2**20, f"{name}: {drafted_estimate} far above {drafted_peak}"
        # Baseline: the image is 1/64 of the size; progressive: the full-size coefficients remain.
        saved = full_peak / 2 if name == "jpeg" else full_peak
        assert drafted_peak < saved, f"{name}: the draft peaked at {drafted_peak}, the full decode {full_peak}"
