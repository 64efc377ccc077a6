"""Camera ingest and result publishing over MQTT."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from edged.settings.base import ConfigPath, MiB, Model

__all__ = ["HomeAssistantSettings", "MqttSettings", "Subscription", "TlsSettings"]

_DISCOVERY_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class TlsSettings(Model):
    ca_file: ConfigPath | None = Field(default=None, description="CA bundle to verify the broker.")
    cert_file: ConfigPath | None = Field(default=None, description="Client certificate.")
    key_file: ConfigPath | None = Field(default=None, description="Client key.")
    insecure: bool = Field(default=False, description="Skip hostname verification (testing only).")


class Subscription(Model):
    topic: str = Field(description="MQTT topic filter; a '+' level names the camera.")
    functions: tuple[str, ...] = Field(min_length=1, description="Functions each frame goes through.")
    qos: Literal[0, 1, 2] = Field(
        default=1,
        description="Subscription QoS. 1 is at-least-once; 2 is subscribed as 1 (paho keeps QoS 2 state in memory "
        "only, so a crash could lose a frame; duplicates are answered from the store instead); 0 may lose frames.",
    )
    max_fps: float | None = Field(
        default=None, gt=0, le=1000,
        description="Frames run per second at most, per camera (off when unset). A frame over the rate waits, and "
        "a newer one replaces it: the replaced frame is acked unprocessed and counted as skipped (not at-least-once).",
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


class HomeAssistantSettings(Model):
    enabled: bool = Field(
        default=False,
        description="Announce each camera as a Home Assistant device (MQTT discovery) and publish its states "
        "retained, on the results connection.",
    )
    discovery_prefix: str = Field(
        default="homeassistant",
        description="Home Assistant's discovery prefix: configs go to {discovery_prefix}/device/{id}/config and "
        "its birth message is read from {discovery_prefix}/status.",
    )
    max_devices: int = Field(
        default=64, ge=1, le=10_000,
        description="Cameras announced at most (each becomes a device); later cameras get none, and a warning.",
    )

    @model_validator(mode="after")
    def _valid_prefix(self) -> HomeAssistantSettings:
        if not _DISCOVERY_PREFIX.match(self.discovery_prefix):
            raise ValueError(f"{self.discovery_prefix!r}: topic levels of letters, digits, '_' and '-'")
        return self


class MqttSettings(Model):
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
    max_attempts: int = Field(
        default=3, ge=1, le=1000,
        description="A QoS 1 frame whose processing was cut short by a crash (OOM kill, SIGKILL, power loss) this "
        "many times is not run again: it becomes an error event with code quarantined and is acked.",
    )
    max_payload_bytes: int = Field(
        default=20 * MiB, ge=1,
        description="Largest frame processed; a bigger one gets an error result. Set the broker's "
        "message_size_limit too, so nothing much bigger reaches edged's memory.",
    )
    max_pixels: int = Field(default=40_000_000, ge=1, description="Largest frame (width*height) processed.")
    homeassistant: HomeAssistantSettings = Field(
        default_factory=HomeAssistantSettings, description="Home Assistant MQTT discovery."
    )
    reconnect_min_delay: float = Field(
        default=0.5, gt=0, le=3600, description="Seconds before the first reconnect; doubles (with jitter) per failure."
    )
    reconnect_max_delay: float = Field(default=30.0, gt=0, le=3600, description="Cap of the reconnect delay, seconds.")
    refused_retry_delay: float = Field(
        default=60.0, gt=0, le=86400,
        description="Seconds between attempts while the broker refuses the connection (bad credentials).",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> MqttSettings:
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ValueError("reconnect_max_delay must not be below reconnect_min_delay")
        if self.homeassistant.enabled and not self.enabled:
            raise ValueError("homeassistant.enabled needs mqtt.enabled")
        return self
