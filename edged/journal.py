"""Logging into journald with real priorities and structured fields, when stderr is the journal's stream.

systemd sets ``$JOURNAL_STREAM`` to ``DEV:INODE`` of the stream it connected stdout/stderr to; only when
stderr is still that stream does edged switch from text lines (all priority "info" to journald) to the
native protocol through systemd-python's JournalHandler. Code passes the fields as ``extra``, e.g.
``log.warning("...", extra={"FUNCTION": name, "ERROR_CODE": code})``; guests' own log lines (the
``edged.function.NAME`` loggers) carry ``FUNCTION`` without that.
"""

from __future__ import annotations

import logging
import os

from systemd.journal import JournalHandler

__all__ = ["FIELDS", "StructuredJournalHandler", "under_journald"]

#: The structured fields edged attaches, taken from a record's ``extra`` when present.
FIELDS = ("FUNCTION", "CAMERA", "EVENT_ID", "ERROR_CODE", "COMPONENT")
_GUEST_LOGGERS = "edged.function."


def under_journald() -> bool:
    """True when stderr is the stream ``$JOURNAL_STREAM`` names (not merely inherited from a parent)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        stat = os.fstat(2)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (int(dev), int(ino))


class StructuredJournalHandler(JournalHandler):  # type: ignore[misc]  # systemd-python is untyped
    """JournalHandler sending a fixed set of fields (the stock one also sends every record attribute).

    The message is ``self.format(record)``, and ``Handler.handle`` runs the filters first, so a
    Formatter and Filters installed on this handler apply as on any other.
    """

    def __init__(self, identifier: str = "edged") -> None:
        super().__init__(SYSLOG_IDENTIFIER=identifier)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {key: str(value) for key in FIELDS if (value := record.__dict__.get(key)) is not None}
            if "FUNCTION" not in fields and record.name.startswith(_GUEST_LOGGERS):
                fields["FUNCTION"] = record.name.removeprefix(_GUEST_LOGGERS)
            self.send(
                self.format(record),
                PRIORITY=str(self.map_priority(record.levelno)),
                LOGGER=record.name,
                THREAD_NAME=record.threadName or "",
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **self._extra,
                **fields,
            )
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
