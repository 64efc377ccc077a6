"""Schema migrations, run in place at open inside one transaction (a crash leaves the old schema intact).

Version 1 (edged before issue 15) kept each result twice: the event's JSON in ``events`` and the whole
CloudEvent in ``outbox``, with text ids. Version 2 keeps the event once and the outbox row points at it.
An outbox row whose events row v1 had already dropped as history gets its event back from the stored
CloudEvent, so no pending result is lost, and ids, order, attempts and dead letters stay as they were.
Version 3 adds the ``attempts`` table (poison frames); version 4 the ``events_by_camera`` index (the event
history's camera filter). Each older store goes through every step after it.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edged.store.codec import frame_key, id_bytes, pack, without_id

__all__ = ["migrate_v1", "migrate_v2", "migrate_v3"]

log = logging.getLogger(__name__)

_STEP = 1000
_V1_INDEXES = ("inputs_by_frame", "events_by_input", "events_mqtt", "outbox_queued", "outbox_waiting")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _stored_body(event_id: str, data: bytes) -> bytes:
    """The v2 stored form of a v1 event body (JSON that starts with its id)."""
    body = without_id(event_id, data)
    if body is None:  # not in the shape v1 wrote it: take the id out the long way
        parsed = json.loads(data)
        parsed.pop("id", None)
        body = _dumps(parsed)
    return pack(body)


def _rows(con: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def _create(con: sqlite3.Connection, schema: str) -> None:
    """Run the schema's statements inside the caller's transaction (executescript would commit it)."""
    for statement in schema.split(";"):
        if statement.strip():
            con.execute(statement)


@contextmanager
def _one_transaction(con: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back whole on any failure: a store migrates fully or not at all."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def migrate_v1(con: sqlite3.Connection, schema: str) -> None:
    """Rewrite a version-1 store as version 2 (``schema``), in one transaction."""
    with _one_transaction(con):
        for table in ("inputs", "events", "outbox"):
            con.execute(f"ALTER TABLE {table} RENAME TO v1_{table}")
        for index in _V1_INDEXES:
            con.execute(f"DROP INDEX IF EXISTS {index}")
        _create(con, schema)
        spans = {row[0]: (row[1], row[2]) for row in
                 _rows(con, "SELECT input_id, MIN(seq), MAX(seq) - MIN(seq) + 1 FROM v1_events GROUP BY input_id")}
        for input_id, camera, sha256, received_at in _rows(con, "SELECT id, camera, sha256, received_at "
                                                                "FROM v1_inputs"):
            first, n = spans.get(input_id, (0, 0))
            con.execute("INSERT INTO inputs (id, frame, received_at, first_seq, events) VALUES (?, ?, ?, ?, ?)",
                        (input_id, frame_key(camera, sha256), received_at, first, n))
        events = 0
        for row in _rows(con, "SELECT seq, id, camera, function, kind, data, body, content_type, "
                              "created_at, mqtt_pending FROM v1_events ORDER BY seq"):
            seq, event_id, camera, function, kind, data, body, content_type, created_at, mqtt = row
            con.execute("INSERT INTO events (seq, id, camera, function, kind, data, body, content_type, "
                        "created_at, mqtt_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, id_bytes(event_id), camera, function, int(kind == "error"),
                         _stored_body(event_id, data.encode()), body, content_type, created_at, mqtt))
            events += 1
        rebuilt = queued = 0
        for row in _rows(con, "SELECT o.seq, o.id, o.camera, o.function, o.cloudevent, o.created_at, o.state, "
                              "o.attempts, o.not_before, o.last_error, e.seq FROM v1_outbox o "
                              "LEFT JOIN v1_events e ON e.seq = o.seq AND e.id = o.id ORDER BY o.seq"):
            seq, event_id, camera, function, cloudevent, created_at, state, attempts, not_before, error, kept = row
            # Parsed only when needed: most rows have their event and no image bytes.
            with_image = b'"data_base64":' in cloudevent
            if kept is None or with_image:
                envelope = json.loads(cloudevent)
                image = envelope["data"].get("image")
                with_image = isinstance(image, dict) and "data_base64" in image
                if kept is None:
                    _rebuild_event(con, seq, event_id, camera, function, created_at, envelope)
                    rebuilt += 1
            con.execute("INSERT INTO outbox (seq, state, attempts, not_before, with_image, last_error) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (seq, state, attempts, not_before, int(with_image), error))
            queued += 1
        # Keep the AUTOINCREMENT high-water mark, so no seq is ever handed out twice.
        con.execute("UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence "
                    "WHERE name = 'v1_events')) WHERE name = 'events'")
        for table in ("inputs", "events", "outbox"):
            con.execute(f"DROP TABLE v1_{table}")
        con.execute("DELETE FROM sqlite_sequence WHERE name = 'v1_events'")
        con.execute("PRAGMA user_version = 2")
    log.info("store migrated from schema 1 to 2: %d events, %d outbox rows (%d events rebuilt from their "
             "CloudEvents)", events, queued, rebuilt)


def migrate_v2(con: sqlite3.Connection, schema: str) -> None:
    """Bring a version-2 store to version 3 (``schema`` only adds tables to it), in one transaction."""
    with _one_transaction(con):
        _create(con, schema)
        con.execute("PRAGMA user_version = 3")
    log.info("store migrated from schema 2 to 3 (attempts of MQTT frames)")


def migrate_v3(con: sqlite3.Connection, schema: str) -> None:
    """Bring a version-3 store to version 4 (``schema`` only adds an index to it), in one transaction."""
    with _one_transaction(con):
        _create(con, schema)
        con.execute("PRAGMA user_version = 4")
    log.info("store migrated from schema 3 to 4 (the event history's camera index)")


def _rebuild_event(con: sqlite3.Connection, seq: int, event_id: str, camera: str, function: str,
                   created_at: float, envelope: dict[str, Any]) -> None:
    """An events row from a v1 CloudEvent (v1 dropped history rows while their outbox rows stayed)."""
    data = envelope["data"]
    body: bytes | None = None
    content_type: str | None = None
    image = data.get("image")
    if isinstance(image, dict) and "data_base64" in image:
        body = base64.b64decode(image["data_base64"])
        content_type = image.get("content_type")
        data = {**data, "image": {k: v for k, v in image.items() if k != "data_base64"}}
    kind = 1 if str(envelope.get("type", "")).startswith("io.edged.error.") else 0
    con.execute("INSERT INTO events (seq, id, camera, function, kind, data, body, content_type, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, id_bytes(event_id), camera, function, kind, _stored_body(event_id, _dumps(data)), body,
                 content_type, created_at))
