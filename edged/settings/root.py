"""The one validated, frozen configuration tree.

Sources, highest priority first: ``EDGED_*`` environment variables (``__`` for nesting), then the TOML
file given with ``--config``. Unknown keys are errors. Relative paths in the TOML file are resolved
against the file's directory, relative paths from the environment against the working directory.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edged.settings.base import ConfigPath, base_dir, toml_file
from edged.settings.deploy import DeploySettings
from edged.settings.functions import FunctionSettings, ModelSettings, PoolSettings
from edged.settings.http import HttpSettings
from edged.settings.limits import LimitsSettings
from edged.settings.mqtt import MqttSettings
from edged.settings.sync import DaprSettings, OutboxSettings, SyncSettings

__all__ = ["FUNCTION_NAME", "ConfigError", "Settings", "is_loopback", "load_settings"]

#: What a function may be called, in the config and over the deploy API.
FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API on this machine (a loopback address, or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """edged's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="EDGED_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    state_dir: ConfigPath = Field(default=Path("/var/lib/edged"), description="SQLite store, module cache.")
    device_id: str = Field(default_factory=socket.gethostname, description="This device's id.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="Local HTTP API.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Camera ingest over MQTT.")
    dapr: DaprSettings = Field(default_factory=DaprSettings, description="Cloud sync through Dapr.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Local outbox bounds.")
    sync: SyncSettings = Field(default_factory=SyncSettings, description="What is synced.")
    pool: PoolSettings = Field(default_factory=PoolSettings, description="Function workers.")
    limits: LimitsSettings = Field(default_factory=LimitsSettings, description="Memory edged may use.")
    nn_backend: Literal["auto", "litert", "tflite"] = Field(default="auto", description="TFLite runtime.")
    functions: dict[str, FunctionSettings] = Field(default_factory=dict, description="Wasm functions.")
    models: dict[str, ModelSettings] = Field(default_factory=dict, description="Models for WASI-NN.")
    deploy: DeploySettings = Field(default_factory=DeploySettings, description="Deploying functions over the API.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = toml_file.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        for name, fn in self.functions.items():
            if not FUNCTION_NAME.match(name):
                raise ValueError(f"functions.{name}: names are lowercase letters, digits, '-' and '_'")
            for model in fn.models:
                if model not in self.models:
                    raise ValueError(f"functions.{name}.models: no [models.{model}] is declared")
        for i, sub in enumerate(self.mqtt.subscriptions):
            for fn_name in sub.functions:
                if fn_name not in self.functions:
                    raise ValueError(f"mqtt.subscriptions.{i}.functions: unknown function {fn_name!r}")
        for model in self.deploy.models:
            if model not in self.models:
                raise ValueError(f"deploy.models: no [models.{model}] is declared")
        if (self.deploy.enabled and not is_loopback(self.http.host) and self.http.token is None
                and self.http.token_file is None):
            raise ValueError(f"deploy.enabled with http.host = {self.http.host!r} (not loopback) needs http.token "
                             "or http.token_file: anyone who reaches the port could run code on this device")
        return self

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"edged-{self.device_id}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists ``(key, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))


@contextmanager
def _sources(path: Path | None) -> Iterator[None]:
    toml_token = toml_file.set(path)
    base_token = base_dir.set(path.parent.absolute() if path is not None else None)
    try:
        yield
    finally:
        toml_file.reset(toml_token)
        base_dir.reset(base_token)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load the configuration from ``path`` (TOML) and the environment; raise ConfigError with every problem."""
    if path is not None:
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([("(file)", f"cannot read {path}: {exc.strerror}")]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([("(file)", f"{path} is not valid TOML: {exc}")]) from exc
    with _sources(path):
        try:
            return Settings(**overrides)
        except ValidationError as exc:
            problems = [
                (".".join(str(p) for p in err["loc"]) or "(root)", err["msg"]) for err in exc.errors()
            ]
            raise ConfigError(problems) from exc
