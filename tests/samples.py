"""Sample events shared by the store tests and the outbox benchmark, so both measure the same shape."""

from __future__ import annotations

import hashlib
from typing import Any

from edged.events import NewEvent, rfc3339

__all__ = ["classify_result", "digest"]


def digest(i: int) -> str:
    """A real sha256 hex digest, different for each ``i`` (incompressible, as a payload's is)."""
    return hashlib.sha256(i.to_bytes(8, "big")).hexdigest()


def classify_result(camera: str, i: int, device: str) -> NewEvent:
    """A classify result shaped like the real ones (top-5 labels, a real digest, a moving clock), no image."""
    data: dict[str, Any] = {
        "device_id": device, "camera": camera, "function": "classify", "kind": "result",
        "source": {"transport": "mqtt", "camera": camera, "sha256": digest(i), "correlation": f"req-{i}",
                   "received_at": rfc3339(1.7e9 + i * 0.125)},
        "latency_ms": 11.2,
        "result": {"top": [{"label": f"label {k}", "index": k * 37 + i % 11, "score": round(0.9 / (k + 1), 4)}
                           for k in range(5)], "model": "efficientnet_lite0"},
        "image": None, "error": None,
    }
    return NewEvent("classify", "result", data)
