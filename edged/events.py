"""Event types and ids: what ingest makes, the store keeps and sync sends (docs/STORE.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["Kind", "NewEvent", "StoredEvent", "new_event_id", "rfc3339"]

Kind = Literal["result", "error"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before it is stored (no id yet). See docs/STORE.md."""

    function: str
    kind: Kind
    data: dict[str, Any]
    body: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as committed: its id is stable from here on."""

    id: str
    seq: int
    camera: str
    function: str
    kind: Kind
    data: dict[str, Any]
    body: bytes | None
    content_type: str | None
    created_at: float


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: unique, and time-ordered so the id indexes stay local."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | rand & (2**62 - 1))
    return f"{value:032x}"
