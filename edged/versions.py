"""What edged runs on: its own version, wasmtime's and the TFLite runtime's, for ``--version`` and /metrics.

Read from the installed distributions' metadata, so nothing heavy is imported to answer.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["TFLITE_PACKAGES", "versions"]

#: The TFLite runtimes in the order ``nn_backend = "auto"`` prefers them (edged.inference.tflite).
TFLITE_PACKAGES = ("ai-edge-litert", "tflite-runtime")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """``edged``, ``wasmtime`` and ``tflite`` (``PACKAGE VERSION``, or ``none``) versions."""
    tflite = next((f"{p} {v}" for p in TFLITE_PACKAGES if (v := _version(p)) is not None), "none")
    return {"edged": _version("edged") or "unknown", "wasmtime": _version("wasmtime") or "unknown",
            "tflite": tflite}
