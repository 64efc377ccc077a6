"""The CloudEvent of a stored event: what the cloud receives (docs/STORE.md, "The CloudEvent").

``{"specversion": "1.0", "id", "source": "edged/{device_id}", "type": "io.edged.{result|error}.{function}",
"time", "datacontenttype": "application/json", "subject": camera, "data": event body}``; an image result
queued with its image (``sync.include_images``, and within ``sync.max_event_bytes``) adds
``data.image.data_base64``. The store keeps the event, not this: ``admit`` decides at commit how the
event goes, ``encode`` builds it at send time from the stored bytes, the same on every retry.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from edged.events import rfc3339
from edged.settings import SyncSettings
from edged.store import OutboxEntry, Queueing

__all__ = ["CloudEvents", "Outgoing"]

log = logging.getLogger(__name__)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One CloudEvent ready to publish."""

    id: str
    camera: str
    cloudevent: bytes


class CloudEvents:
    """Encodes stored events for one device under one sync configuration."""

    def __init__(self, device_id: str, sync: SyncSettings) -> None:
        self._source = _dumps(f"edged/{device_id}")
        self._sync = sync
        self._types: dict[tuple[str, str], bytes] = {}
        self._subjects: dict[str, bytes] = {}

    def _head(self, entry: OutboxEntry) -> bytes:
        """The envelope up to ``"data":``, as json.dumps would write it (``data`` is the last key)."""
        key = (entry.kind, entry.function)
        ce_type = self._types.get(key)
        if ce_type is None:
            kind = "result" if entry.kind == "result" else "error"
            ce_type = _dumps(f"io.edged.{kind}.{entry.function or ('ingest' if kind == 'error' else 'unknown')}")
            self._types[key] = ce_type
        subject = self._subjects.get(entry.camera)
        if subject is None:
            subject = self._subjects.setdefault(entry.camera, _dumps(entry.camera))
        return (b'{"specversion":"1.0","id":"' + entry.id.encode() + b'","source":' + self._source + b',"type":'
                + ce_type + b',"time":"' + rfc3339(entry.created_at).encode()
                + b'","datacontenttype":"application/json","subject":' + subject + b',"data":')

    def encode(self, entry: OutboxEntry) -> bytes:
        """The serialized CloudEvent; with the image when the entry carries its bytes."""
        data = entry.data
        if entry.body is not None:
            parsed = json.loads(data)
            image = parsed.get("image")
            if isinstance(image, dict):
                b64 = base64.b64encode(entry.body).decode("ascii")
                data = _dumps({**parsed, "image": {**image, "data_base64": b64}})
        return self._head(entry) + data + b"}"

    def outgoing(self, entry: OutboxEntry) -> Outgoing:
        return Outgoing(entry.id, entry.camera, self.encode(entry))

    def admit(self, entry: OutboxEntry) -> Queueing:
        """How a new event goes to the cloud: with its image, without, or not at all (logged)."""
        limit = self._sync.max_event_bytes
        if self._sync.include_images and entry.body is not None:
            size = len(self.encode(entry))
            if size <= limit:
                return "with_image"
            log.info("event %s: image of %d bytes left out of the cloud event (sync.max_event_bytes=%d)",
                     entry.id, len(entry.body), limit, extra={"EVENT_ID": entry.id})
        size = len(self._head(entry)) + len(entry.data) + 1
        if size > limit:
            log.warning("event %s: cloud event of %d bytes is over sync.max_event_bytes=%d: not synced",
                        entry.id, size, limit, extra={"EVENT_ID": entry.id})
            return "oversize"
        return "without_image"
