"""Functions, their grants, the models they may use, and the pool that runs them."""

from __future__ import annotations

import os
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from edged.settings.base import ConfigPath, MiB, Model
from edged.wasm.host.urls import normalize_origin

__all__ = ["FunctionSettings", "ModelSettings", "PoolSettings", "Preopen", "origin"]


def origin(value: str) -> str:
    """``value`` as a normalized origin; ValueError if it has a path, query or fragment."""
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an allowed host is scheme://host[:port] with no path")
    return normalize_origin(value)


class Preopen(Model):
    host: ConfigPath = Field(description="Directory on the device that the function may see.")
    guest: str = Field(description="Absolute path under which the function sees it, e.g. /data.")
    writable: bool = Field(default=False, description="Read-only unless true.")

    @model_validator(mode="after")
    def _guest_absolute(self) -> Preopen:
        if not self.guest.startswith("/"):
            raise ValueError(f"guest path {self.guest!r} must be absolute")
        return self


class FunctionSettings(Model):
    module: ConfigPath = Field(description="Path of the .wasm module.")
    abi: Literal["wasi-command", "frame-v1"] = Field(
        default="frame-v1", description="Calling convention, see docs/ABI.md."
    )
    input: Literal["frame", "raw"] = Field(
        default="frame",
        description="frame: pixels decoded once by the host; raw: the bytes as received (decoded in the sandbox).",
    )
    max_frame: tuple[Annotated[int, Field(ge=1, le=65535)], Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        default=None,
        description="[width, height]: the smallest frame the function works as well from (classify: "
                    "[224, 224]). A JPEG at least twice that size is then decoded smaller (1/2, 1/4 or 1/8, "
                    "never below it) unless another function on the same frame needs more. Unset: the full "
                    "size. Wins over the module's edged.max_frame custom section.",
    )
    resize: Literal["none", "bilinear"] = Field(
        default="none",
        description="bilinear: the host hands the function its frame resized to exactly max_frame (aspect ratio "
                    "not kept) with Pillow's bilinear filter, in C on the one decoded frame; what a function that "
                    "resizes that way itself (classify) then gets is already its size. Needs max_frame. none: the "
                    "frame as decoded.",
    )
    timeout_ms: int = Field(default=5000, ge=1, le=600_000, description="Wall-clock limit of one call.")
    memory_mb: int = Field(default=128, ge=1, le=4096, description="Linear memory limit of one call.")
    max_output_bytes: int = Field(default=32 * MiB, ge=1, description="Largest result a call may return.")
    preopens: tuple[Preopen, ...] = Field(default=(), description="Directories the function may see.")
    allowed_hosts: tuple[Annotated[str, AfterValidator(origin)], ...] = Field(
        default=(), description="Origins (scheme://host:port) the function may call over HTTP."
    )
    private_hosts: tuple[Annotated[str, AfterValidator(origin)], ...] = Field(
        default=(),
        description="Those of allowed_hosts that may resolve to a loopback, link-local or private address "
                    "(a LAN camera, an NVR, a local service); the others never reach one.",
    )
    models: tuple[str, ...] = Field(default=(), description="Models (from [models]) it may load by name.")
    allow_model_bytes: bool = Field(
        default=False, description="Allow WASI-NN load() of model bytes supplied by the guest."
    )
    log: bool = Field(default=True, description="Grant the edged.log import; stderr is logged either way.")

    @model_validator(mode="after")
    def _private_hosts_are_allowed(self) -> FunctionSettings:
        stray = [origin for origin in self.private_hosts if origin not in self.allowed_hosts]
        if stray:
            raise ValueError(f"private_hosts {stray} must also be in allowed_hosts")
        return self

    @model_validator(mode="after")
    def _resize_has_a_size(self) -> FunctionSettings:
        if self.resize != "none" and (self.max_frame is None or self.input == "raw"):
            raise ValueError('resize needs a decoded frame (input = "frame") and its size (max_frame)')
        return self

    @model_validator(mode="after")
    def _command_takes_raw(self) -> FunctionSettings:
        if self.abi == "wasi-command" and self.input != "raw":
            raise ValueError('a wasi-command function reads the raw bytes on stdin: set input = "raw"')
        return self


class ModelSettings(Model):
    path: ConfigPath = Field(description="The .tflite file.")
    labels: ConfigPath | None = Field(default=None, description="Class names, one per line.")
    threads: int = Field(default=1, ge=1, le=64, description="Interpreter threads per invocation.")
    preload: bool = Field(default=False, description=(
        "Allocate one interpreter at start: ~25 MB more idle RSS (EfficientNet-Lite0), no allocation in the "
        "first call's time. Off: allocated by the first call that needs it."))


class PoolSettings(Model):
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=256, description="Threads running calls."
    )
    queue: int = Field(default=16, ge=0, le=100_000, description="Calls that may wait for a worker.")
    keep_resident_mb: int = Field(
        default=8, ge=0, le=1024,
        description="Per instance slot (workers + 2): guest memory zeroed in place between calls instead of "
                    "unmapped (fewer page faults; up to that much RSS stays committed per slot).",
    )
