"""The CloudEvent of a stored event: what the cloud receives (docs/STORE.md, "The CloudEvent").

``{"specversion": "1.0", "id", "source": "edged/{device_id}", "type": "io.edged.{result|error}.{function}",
"time", "datacontenttype": "application/json", "subject": camera, "data": event body}``; with
``sync.include_images`` an image result adds ``data.image.data_base64`` when the event stays within
``sync.max_event_bytes``, else it goes without the image bytes.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from edged.events import StoredEvent, rfc3339
from edged.settings import SyncSettings

__all__ = ["CloudEvents"]

log = logging.getLogger(__name__)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class CloudEvents:
    """Encodes stored events for one device under one sync configuration."""

    def __init__(self, device_id: str, sync: SyncSettings) -> None:
        self._source = f"edged/{device_id}"
        self._sync = sync

    def encode(self, event: StoredEvent) -> bytes | None:
        """The serialized CloudEvent; None (logged) when even without its image it is over max_event_bytes."""
        kind = "result" if event.kind == "result" else "error"
        ce_type = f"io.edged.{kind}.{event.function or ('ingest' if kind == 'error' else 'unknown')}"
        envelope: dict[str, Any] = {
            "specversion": "1.0", "id": event.id, "source": self._source, "type": ce_type,
            "time": rfc3339(event.created_at), "datacontenttype": "application/json", "subject": event.camera,
            "data": event.data,
        }
        limit = self._sync.max_event_bytes
        image = event.data.get("image")
        if self._sync.include_images and event.body is not None and isinstance(image, dict):
            b64 = base64.b64encode(event.body).decode("ascii")
            encoded = _dumps({**envelope, "data": {**event.data, "image": {**image, "data_base64": b64}}})
            if len(encoded) <= limit:
                return encoded
            log.info("event %s: image of %d bytes left out of the cloud event (sync.max_event_bytes=%d)",
                     event.id, len(event.body), limit)
        encoded = _dumps(envelope)
        if len(encoded) > limit:
            log.warning("event %s: cloud event of %d bytes is over sync.max_event_bytes=%d: not synced",
                        event.id, len(encoded), limit)
            return None
        return encoded
