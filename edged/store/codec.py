"""How an event lies on disk: its id as 16 bytes, its JSON body compressed with a preset dictionary.

The body is stored WITHOUT its ``"id"`` key (the id is a column); ``with_id`` puts it back in front, so
what leaves the store is byte-for-byte the JSON the event was committed with. A stored body starts with
one codec byte: ``RAW`` (the JSON as is) or ``DEFLATE_V1`` (raw deflate primed with ``_DICTIONARY_V1``).
A dictionary is part of the file format: never edit one, add the next codec instead.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Literal

__all__ = ["KINDS", "ROW_COST", "SIZE_SQL", "frame_key", "id_bytes", "id_text", "pack", "unpack", "with_id",
           "without_id"]

#: What one events row ``e`` counts against outbox.max_bytes: its payload plus the fixed share of rows
#: and indexes each result costs on disk (measured by bench/outbox_bench.py), so the cap is a disk cap.
ROW_COST = 160
SIZE_SQL = f"(length(e.data) + coalesce(length(e.body), 0) + {ROW_COST})"

#: ``events.kind`` holds the index in this tuple.
KINDS: tuple[Literal["result"], Literal["error"]] = ("result", "error")

RAW, DEFLATE_V1 = 0, 1
#: A 2 KiB window holds the dictionary and a typical body; a small window keeps each compressor cheap.
_WBITS = -11
_LEVEL = 6
_MEM_LEVEL = 2
#: Bodies shorter than this are stored raw: deflate's few bytes of framing would not pay.
_MIN_PACKED = 64

# The event shape of docs/STORE.md: keys, the usual values, the frequent substrings of results. Deflate
# finds back-references into it, the later parts most cheaply, so the commonest strings come last.
_DICTIONARY_V1 = (
    b'"error":{"code":"bad_image","detail":"not an image"},"error":{"code":"function_error","detail":"'
    b'"image":{"content_type":"image/png","bytes":,"sha256":"'
    b'{"device_id":"","camera":"","function":"","kind":"error","source":{"transport":"http","camera":"'
    b'"score":0.,"index":,"label":"","labels":[{"top":[{"label":"'
    b',"kind":"result","source":{"transport":"mqtt","camera":"cam","sha256":"'
    b'","correlation":null,"received_at":"202'
    b'Z"},"latency_ms":,"result":{'
    b'},"image":null,"error":null}'
)


def id_bytes(event_id: str) -> bytes:
    """The 16 bytes stored for an id given as 32 hex digits."""
    raw = bytes.fromhex(event_id)
    if len(raw) != 16:
        raise ValueError(f"event id {event_id!r} is not 32 hex digits")
    return raw


def id_text(raw: bytes) -> str:
    """The id as shown everywhere outside the store: 32 lower-case hex digits."""
    return raw.hex()


def frame_key(camera: str, sha256: str) -> int:
    """A signed 64-bit key for the dedupe look-up of (camera, payload digest)."""
    digest = hashlib.sha256(camera.encode() + b"\0" + sha256.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def with_id(event_id: str, body: bytes) -> bytes:
    """``{"id":"…", …body}``: the stored body with its id back in the first place."""
    head = b'{"id":"' + event_id.encode() + b'"'
    return head + b"}" if body == b"{}" else head + b"," + body[1:]


def without_id(event_id: str, data: bytes) -> bytes | None:
    """The body as stored, from JSON that starts with this id; None when it does not."""
    head = b'{"id":"' + event_id.encode() + b'"'
    if not data.startswith(head):
        return None
    rest = data[len(head):]
    if rest == b"}":
        return b"{}"
    return b"{" + rest[1:] if rest.startswith(b",") else None


def pack(body: bytes) -> bytes:
    """The stored form of a JSON body: compressed when that is shorter."""
    if len(body) >= _MIN_PACKED:
        c = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zdict=_DICTIONARY_V1)
        packed = c.compress(body) + c.flush()
        if len(packed) + 1 < len(body) + 1:
            return bytes((DEFLATE_V1,)) + packed
    return bytes((RAW,)) + body


def unpack(stored: bytes) -> bytes:
    """The JSON body back from its stored form."""
    codec, payload = stored[0], stored[1:]
    if codec == RAW:
        return payload
    if codec == DEFLATE_V1:
        d = zlib.decompressobj(_WBITS, zdict=_DICTIONARY_V1)
        return d.decompress(payload) + d.flush()
    raise ValueError(f"unknown body codec {codec}")
