"""How much memory edged may use, and how much of it work (frames, bodies, guests, outputs) may take."""

from __future__ import annotations

from pydantic import Field, model_validator

from edged.settings.base import Model

__all__ = ["LimitsSettings"]


class LimitsSettings(Model):
    memory_mb: int | None = Field(
        default=None, ge=1,
        description="Memory edged may use in all, in MiB. Default: its cgroup's limit (systemd MemoryMax=, "
        "cgroup v2 memory.max or v1 memory.limit_in_bytes) when there is one, else half of the RAM.",
    )
    reserve_mb: int = Field(
        default=176, ge=0,
        description="Memory edged needs idle (the daemon, the compiled functions, the models), in MiB: "
        "subtracted from memory_mb to get what work may reserve. Measured with the shipped functions "
        "and model: RSS 158 MiB after start, 163 MiB after calls to both (cgroup charge 121-140 MiB).",
    )

    @model_validator(mode="after")
    def _room_for_work(self) -> LimitsSettings:
        if self.memory_mb is not None and self.memory_mb <= self.reserve_mb:
            raise ValueError(f"memory_mb ({self.memory_mb}) leaves nothing for work above reserve_mb "
                             f"({self.reserve_mb})")
        return self
