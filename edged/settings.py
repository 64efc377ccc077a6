"""The one validated, frozen configuration tree.

Sources, highest priority first: ``EDGED_*`` environment variables (``__`` for nesting), then the TOML
file given with ``--config``. Unknown keys are errors. Relative paths in the TOML file are resolved
against the file's directory, relative paths from the environment against the working directory.
"""

from __future__ import annotations

import contextvars
import os
import re
import socket
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "ConfigError",
    "DaprSettings",
    "FunctionSettings",
    "HttpSettings",
    "ModelSettings",
    "MqttSettings",
    "OutboxSettings",
    "PoolSettings",
    "Preopen",
    "Settings",
    "Subscription",
    "SyncSettings",
    "TlsSettings",
    "load_settings",
    "normalize_origin",
]

_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edged_toml_file", default=None)
_base_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edged_base_dir", default=None)

MiB = 1024 * 1024
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _resolve(path: Path) -> Path:
    path = path.expanduser()
    if path.is_absolute():
        return path
    base = _base_dir.get()
    return Path(os.path.normpath((base / path) if base is not None else path.absolute()))


ConfigPath = Annotated[Path, AfterValidator(_resolve)]


def normalize_origin(url: str) -> str:
    """Return ``scheme://host:port`` with the default port made explicit; raise ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: credentials are not allowed in an origin")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port") from exc
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def _origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an allowed host is scheme://host[:port] with no path")
    return normalize_origin(value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preopen(_Model):
    host: ConfigPath = Field(description="Directory on the device that the function may see.")
    guest: str = Field(description="Absolute path under which the function sees it, e.g. /data.")
    writable: bool = Field(default=False, description="Read-only unless true.")

    @model_validator(mode="after")
    def _guest_absolute(self) -> Preopen:
        if not self.guest.startswith("/"):
            raise ValueError(f"guest path {self.guest!r} must be absolute")
        return self


class FunctionSettings(_Model):
    module: ConfigPath = Field(description="Path of the .wasm module.")
    abi: Literal["wasi-command", "frame-v1"] = Field(
        default="frame-v1", description="Calling convention, see docs/ABI.md."
    )
    input: Literal["frame", "raw"] = Field(
        default="frame",
        description="frame: pixels decoded once by the host; raw: the bytes as received (decoded in the sandbox).",
    )
    timeout_ms: int = Field(default=5000, ge=1, le=600_000, description="Wall-clock limit of one call.")
    memory_mb: int = Field(default=128, ge=1, le=4096, description="Linear memory limit of one call.")
    max_output_bytes: int = Field(default=32 * MiB, ge=1, description="Largest result a call may return.")
    preopens: tuple[Preopen, ...] = Field(default=(), description="Directories the function may see.")
    allowed_hosts: tuple[Annotated[str, AfterValidator(_origin)], ...] = Field(
        default=(), description="Origins (scheme://host:port) the function may call over HTTP."
    )
    models: tuple[str, ...] = Field(default=(), description="Models (from [models]) it may load by name.")
    allow_model_bytes: bool = Field(
        default=False, description="Allow WASI-NN load() of model bytes supplied by the guest."
    )
    log: bool = Field(default=True, description="Grant the edged.log import; stderr is logged either way.")

    @model_validator(mode="after")
    def _command_takes_raw(self) -> FunctionSettings:
        if self.abi == "wasi-command" and self.input != "raw":
            raise ValueError('a wasi-command function reads the raw bytes on stdin: set input = "raw"')
        return self


class ModelSettings(_Model):
    path: ConfigPath = Field(description="The .tflite file.")
    labels: ConfigPath | None = Field(default=None, description="Class names, one per line.")
    threads: int = Field(default=1, ge=1, le=64, description="Interpreter threads per invocation.")


class PoolSettings(_Model):
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=256, description="Threads running calls."
    )
    queue: int = Field(default=16, ge=0, le=100_000, description="Calls that may wait for a worker.")
    keep_resident_mb: int = Field(
        default=8, ge=0, le=1024,
        description="Per instance slot (workers + 2): guest memory zeroed in place between calls instead of "
                    "unmapped (fewer page faults; up to that much RSS stays committed per slot).",
    )


class HttpSettings(_Model):
    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    token: SecretStr | None = Field(default=None, description="Bearer token required on all but health routes.")
    max_body_bytes: int = Field(default=20 * MiB, ge=1, description="Largest accepted request body.")
    max_pixels: int = Field(default=40_000_000, ge=1, description="Largest accepted image (width*height).")


class TlsSettings(_Model):
    ca_file: ConfigPath | None = Field(default=None, description="CA bundle to verify the broker.")
    cert_file: ConfigPath | None = Field(default=None, description="Client certificate.")
    key_file: ConfigPath | None = Field(default=None, description="Client key.")
    insecure: bool = Field(default=False, description="Skip hostname verification (testing only).")


class Subscription(_Model):
    topic: str = Field(description="MQTT topic filter; a '+' level names the camera.")
    functions: tuple[str, ...] = Field(min_length=1, description="Functions each frame goes through.")
    qos: Literal[0, 1, 2] = Field(
        default=1,
        description="Subscription QoS. 1 is at-least-once; 2 is subscribed as 1 (paho keeps QoS 2 state in memory "
        "only, so a crash could lose a frame; duplicates are answered from the store instead); 0 may lose frames.",
    )

    @model_validator(mode="after")
    def _valid_filter(self) -> Subscription:
        topic = self.topic
        if topic.startswith("$share/"):
            parts = topic.split("/", 2)
            if len(parts) < 3 or not parts[1] or not parts[2]:
                raise ValueError(f"{topic!r}: a shared subscription is $share/GROUP/FILTER")
            topic = parts[2]
        levels = topic.split("/")
        if not topic or "\0" in topic or len(topic.encode()) > 65535:
            raise ValueError(f"{self.topic!r} is not a topic filter")
        for i, level in enumerate(levels):
            if ("+" in level and level != "+") or ("#" in level and (level != "#" or i != len(levels) - 1)):
                raise ValueError(f"{self.topic!r}: '+' must be a whole level and '#' the whole last level")
        return self


class MqttSettings(_Model):
    enabled: bool = Field(default=True, description="Connect to a broker at all.")
    host: str = Field(default="127.0.0.1", description="Broker host.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version.")
    client_id: str | None = Field(
        default=None,
        description="Unique client id of the ingest connection; default edged-{device_id}. Results are published "
        "on a second connection, {client_id}-results.",
    )
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keepalive seconds.")
    username: str | None = Field(default=None, description="User name.")
    password_file: ConfigPath | None = Field(
        default=None,
        description="File holding the password (never the TOML); its name is looked up in $CREDENTIALS_DIRECTORY "
        "first, so systemd's LoadCredential=NAME:PATH works.",
    )
    session_expiry: int = Field(default=86400, ge=0, description="MQTT 5 session expiry, seconds.")
    tls: TlsSettings | None = Field(default=None, description="TLS to the broker.")
    prefix: str = Field(default="edged", description="Topic prefix for status, results and errors.")
    subscriptions: tuple[Subscription, ...] = Field(default=(), description="What to ingest.")
    publish_images: bool = Field(
        default=False,
        description="Publish image results as the image bytes, the event in MQTT 5 user properties (MQTT 3.1.1: "
        "always the JSON event).",
    )
    max_inflight: int = Field(
        default=16, ge=1, le=65535,
        description="Frames taken but not yet acked: edged stops reading from the broker at this many (the read "
        "in progress may add up to max_publish_inflight + 1 more). Also sent as the MQTT 5 Receive Maximum.",
    )
    max_publish_inflight: int = Field(
        default=32, ge=1, le=65535, description="Results published but not yet acknowledged by the broker."
    )
    dedupe_window: float = Field(
        default=600.0, ge=0,
        description="Seconds within which the same bytes from the same camera (a redelivery after a crash) are "
        "answered from the store instead of being processed again; 0 turns this off.",
    )
    max_payload_bytes: int = Field(
        default=20 * MiB, ge=1,
        description="Largest frame processed; a bigger one gets an error result. Set the broker's "
        "message_size_limit too, so nothing much bigger reaches edged's memory.",
    )
    max_pixels: int = Field(default=40_000_000, ge=1, description="Largest frame (width*height) processed.")
    reconnect_min_delay: float = Field(
        default=0.5, gt=0, le=3600, description="Seconds before the first reconnect; doubles (with jitter) per failure."
    )
    reconnect_max_delay: float = Field(default=30.0, gt=0, le=3600, description="Cap of the reconnect delay, seconds.")
    refused_retry_delay: float = Field(
        default=60.0, gt=0, le=86400,
        description="Seconds between attempts while the broker refuses the connection (bad credentials).",
    )

    @model_validator(mode="after")
    def _reconnect_order(self) -> MqttSettings:
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ValueError("reconnect_max_delay must not be below reconnect_min_delay")
        return self


class DaprSettings(_Model):
    enabled: bool = Field(default=True, description="Sync results through the sidecar.")
    url: str = Field(default="http://127.0.0.1:3500", description="The sidecar's HTTP API.")
    pubsub: str = Field(default="cloud", description="Pub/sub component name.")
    topic: str = Field(default="edged-results", description="Topic results go to.")
    token: SecretStr | None = Field(default=None, description="dapr-api-token value.")
    token_file: ConfigPath | None = Field(
        default=None,
        description="File holding the token; its name is looked up in $CREDENTIALS_DIRECTORY first. Re-read "
        "after the sidecar rejects the token, so fixing the file needs no restart.",
    )
    bulk: bool = Field(default=False, description="Use the bulk publish API.")
    timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds one request to the sidecar may take.")
    concurrency: int = Field(
        default=4, ge=1, le=64,
        description="Single publishes in flight at once (bulk = false); each camera's events still go one at a "
        "time, in order.",
    )
    retry_min: float = Field(
        default=0.5, gt=0, le=3600,
        description="Seconds before retrying after a connection error or a 5xx; doubles (with jitter) per failure.",
    )
    retry_max: float = Field(default=30.0, gt=0, le=3600, description="Cap of that retry delay, seconds.")
    auth_retry: float = Field(
        default=60.0, gt=0, le=86400,
        description="Seconds between attempts while the sidecar rejects the token (401/403); nothing is dropped.",
    )

    @model_validator(mode="after")
    def _checks(self) -> DaprSettings:
        if self.retry_max < self.retry_min:
            raise ValueError("retry_max must not be below retry_min")
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


class OutboxSettings(_Model):
    max_bytes: int = Field(default=512 * MiB, ge=4096, description="Disk cap of queued events.")
    max_age: float = Field(default=7 * 86400.0, gt=0, description="Seconds an event may wait.")
    on_full: Literal["drop_oldest", "reject_new"] = Field(default="drop_oldest", description="Overflow policy.")


class SyncSettings(_Model):
    include_images: bool = Field(default=False, description="Sync image results too.")
    max_event_bytes: int = Field(default=4 * MiB, ge=1024, description="Largest event sent.")
    batch: int = Field(default=100, ge=1, le=10_000, description="Events per bulk request.")


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
    nn_backend: Literal["auto", "litert", "tflite"] = Field(default="auto", description="TFLite runtime.")
    functions: dict[str, FunctionSettings] = Field(default_factory=dict, description="Wasm functions.")
    models: dict[str, ModelSettings] = Field(default_factory=dict, description="Models for WASI-NN.")

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
        toml = _toml_file.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        for name, fn in self.functions.items():
            if not _NAME.match(name):
                raise ValueError(f"functions.{name}: names are lowercase letters, digits, '-' and '_'")
            for model in fn.models:
                if model not in self.models:
                    raise ValueError(f"functions.{name}.models: no [models.{model}] is declared")
        for i, sub in enumerate(self.mqtt.subscriptions):
            for fn_name in sub.functions:
                if fn_name not in self.functions:
                    raise ValueError(f"mqtt.subscriptions.{i}.functions: unknown function {fn_name!r}")
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
    toml_token = _toml_file.set(path)
    base_token = _base_dir.set(path.parent.absolute() if path is not None else None)
    try:
        yield
    finally:
        _toml_file.reset(toml_token)
        _base_dir.reset(base_token)


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
