"""Where the tests find the repository's own files: the built functions, the model, the sample photos."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHELSEA", "CLASSIFY_DIR", "CLASSIFY_WASM", "DATA", "GRAYSCALE_WASM", "LABELS", "MODEL", "MODEL_DIR",
           "REPO"]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
CHELSEA = DATA / "chelsea.jpg"
GRAYSCALE_WASM = REPO / "functions" / "grayscale" / "grayscale.wasm"
CLASSIFY_DIR = REPO / "functions" / "classify"
CLASSIFY_WASM = CLASSIFY_DIR / "classify.wasm"
MODEL_DIR = CLASSIFY_DIR / "model"
MODEL = MODEL_DIR / "efficientnet_lite0.tflite"
LABELS = MODEL_DIR / "labels.txt"
