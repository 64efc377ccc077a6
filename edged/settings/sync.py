"""The outbox bounds and cloud sync through the Dapr sidecar."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from edged.settings.base import ConfigPath, MiB, Model

__all__ = ["DaprSettings", "OutboxSettings", "SyncSettings"]


class DaprSettings(Model):
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


class OutboxSettings(Model):
    max_bytes: int = Field(default=512 * MiB, ge=4096, description="Disk cap of queued events.")
    max_age: float = Field(default=7 * 86400.0, gt=0, description="Seconds an event may wait.")
    on_full: Literal["drop_oldest", "reject_new"] = Field(default="drop_oldest", description="Overflow policy.")
    max_image_bytes: int = Field(
        default=4 * MiB, ge=0,
        description="Largest result image kept in a stored event; a larger one is dropped from the event, "
        "which says so (image.dropped), and the rest of the event is kept.",
    )


class SyncSettings(Model):
    include_images: bool = Field(default=False, description="Sync image results too.")
    max_event_bytes: int = Field(default=4 * MiB, ge=1024, description="Largest event sent.")
    batch: int = Field(default=100, ge=1, le=10_000, description="Events per bulk request.")
