"""The local HTTP API."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from edged.settings.base import ConfigPath, MiB, Model

__all__ = ["HttpSettings"]


class HttpSettings(Model):
    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    token: SecretStr | None = Field(default=None, description="Bearer token required on all but health routes.")
    token_file: ConfigPath | None = Field(
        default=None,
        description="File holding that bearer token, read at start; its name is looked up in "
        "$CREDENTIALS_DIRECTORY first, so systemd's LoadCredential=NAME:PATH works.",
    )
    max_body_bytes: int = Field(default=20 * MiB, ge=1, description="Largest accepted request body.")
    max_pixels: int = Field(default=40_000_000, ge=1, description="Largest accepted image (width*height).")
    header_timeout: float = Field(
        default=10.0, gt=0, le=3600,
        description="Seconds a connection may take to send complete request headers, counted from the connect "
        "and from the end of the previous response on a keep-alive connection; then it is closed.",
    )
    body_idle_timeout: float = Field(
        default=10.0, gt=0, le=3600,
        description="Seconds a request body may send nothing before the read is aborted (408).",
    )
    max_connections: int = Field(
        default=512, ge=1, le=65536,
        description="Open connections at most; past it a new connection gets an immediate 503 and is closed. "
        "Keep it well under the file descriptor limit (the unit's LimitNOFILE).",
    )

    @model_validator(mode="after")
    def _one_token(self) -> HttpSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self
