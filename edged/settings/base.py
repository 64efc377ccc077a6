"""Shared pieces of the settings tree: paths resolved against the config file, the frozen strict model."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["ConfigPath", "MiB", "Model", "base_dir", "toml_file"]

toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edged_toml_file", default=None)
base_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edged_base_dir", default=None)

MiB = 1024 * 1024


def _resolve(path: Path) -> Path:
    path = path.expanduser()
    if path.is_absolute():
        return path
    base = base_dir.get()
    return Path(os.path.normpath((base / path) if base is not None else path.absolute()))


ConfigPath = Annotated[Path, AfterValidator(_resolve)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
