"""Deploying functions over the HTTP API: on or off, and the ceilings of what an API deploy may grant."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from edged.settings.base import ConfigPath, MiB, Model
from edged.settings.functions import origin

__all__ = ["DeploySettings"]


class DeploySettings(Model):
    enabled: bool = Field(
        default=False,
        description="Serve PUT /v1/modules and PUT/DELETE /v1/functions/{name}; needs http.token (or token_file) "
                    "when http.host is not a loopback address.",
    )
    max_module_bytes: int = Field(default=32 * MiB, ge=1, description="Largest module upload (413 past it).")
    max_modules_bytes: int = Field(
        default=256 * MiB, ge=1,
        description="Bytes all stored modules may take; an upload past it first removes the oldest unreferenced "
                    "modules older than module_grace, else is refused (507 store_full).",
    )
    module_grace: float = Field(
        default=3600.0, ge=0,
        description="Seconds an uploaded module is kept though no kept version uses it (room to PUT its function).",
    )
    auto_rollback_after: int = Field(
        default=5, ge=0, le=10_000,
        description="A new version whose first this many calls all fail (trap, bad_output, timeout, "
                    "memory_limit) while the previous version had succeeded is rolled back; 0: never.",
    )
    keep_versions: int = Field(default=5, ge=1, le=1000, description="Earlier versions kept per function.")
    max_memory_mb: int = Field(
        default=128, ge=1, le=4096,
        description="Largest memory_mb an API deploy may grant (the pool's instance slots are at least this big).",
    )
    max_timeout_ms: int = Field(default=10_000, ge=1, le=600_000, description="Largest timeout_ms it may grant.")
    max_output_bytes: int = Field(default=32 * MiB, ge=1, description="Largest max_output_bytes it may grant.")
    preopens: tuple[ConfigPath, ...] = Field(
        default=(), description="Host directories (or their subdirectories) an API deploy may preopen.",
    )
    writable_preopens: bool = Field(default=False, description="Whether those preopens may be writable.")
    allowed_hosts: tuple[Annotated[str, AfterValidator(origin)], ...] = Field(
        default=(), description="Origins an API deploy may put in allowed_hosts.",
    )
    private_hosts: tuple[Annotated[str, AfterValidator(origin)], ...] = Field(
        default=(), description="Origins an API deploy may put in private_hosts (reach a private address).",
    )
    models: tuple[str, ...] = Field(default=(), description="Models (from [models]) an API deploy may grant.")
    allow_model_bytes: bool = Field(default=False, description="Whether it may grant allow_model_bytes.")
