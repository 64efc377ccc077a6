"""The event history: how long and how much of it the store keeps, and its live stream's bounds."""

from __future__ import annotations

from pydantic import Field

from edged.settings.base import MiB, Model

__all__ = ["HistorySettings"]


class HistorySettings(Model):
    max_age: float = Field(
        default=7 * 86400.0, gt=0,
        description="Seconds an event waiting for nothing (synced, or never to sync, and published) stays "
        "browsable under GET /v1/events.",
    )
    max_bytes: int = Field(
        default=256 * MiB, ge=0,
        description="Bytes of such events kept (counted as outbox.max_bytes counts them); the whole store, "
        "outbox and history together, never passes outbox.max_bytes, and history goes first there.",
    )
    images: bool = Field(
        default=True,
        description="Keep result images for the history (GET /v1/events/{id}/image). With false, and no other "
        "reader (sync.include_images, mqtt.publish_images), a result keeps only its image's metadata.",
    )
    max_streams: int = Field(
        default=16, ge=1, le=1024,
        description="GET /v1/events/stream connections open at once; one more is refused with 503.",
    )
