"""Log output that stays readable under hostile input: control characters escaped, floods of one kind capped.

``SafeFormatter`` escapes C0 control characters (all but tab), DEL, C1 control characters (U+0080-U+009F,
e.g. U+009B, a one-character CSI) and lone surrogates (undecodable header bytes) in every line it writes,
the message with its arguments and any traceback alike, so a camera name or a guest's log line can neither
drive the terminal nor forge a log line of its own. Tracebacks keep their line breaks.

``RepeatFilter`` lets ``burst`` records of one kind through per ``interval``, holds back the rest, and
then reports one summary line with the count it held back. A kind is (logger, message template, exception
type); only warnings and worse, and records carrying an exception, are capped. It sits on the handler, so
it sees records from every logger (a filter on the root logger would miss the ones propagated to it).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["RepeatFilter", "SafeFormatter", "configure", "escape"]

_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSAFE_KEEP_NEWLINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
#: Marks the summary records RepeatFilter makes, so it lets them through.
_SUMMARY = "edged_repeat_summary"


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters (not tab) and lone surrogates written as ``\\xNN``/``\\uNNNN``."""
    pattern = _UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escaped, text)


class SafeFormatter(logging.Formatter):
    """A Formatter whose output carries no raw control characters but the line breaks of a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        parts = [escape(self.formatMessage(record))]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(escape(record.exc_text, keep_newlines=True))
        if record.stack_info:
            parts.append(escape(self.formatStack(record.stack_info), keep_newlines=True))
        return "\n".join(parts)


_Kind = tuple[str, str, str]


@dataclass(slots=True)
class _Window:
    started: float
    passed: int = 0
    held: int = 0


class RepeatFilter(logging.Filter):
    """Caps records of one kind at ``burst`` per ``interval`` seconds; ``report`` gets the summary records."""

    def __init__(self, report: Callable[[logging.LogRecord], object], *, burst: int = 5, interval: float = 60.0,
                 max_kinds: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._report = report
        self._burst = burst
        self._interval = interval
        self._max_kinds = max_kinds
        self._clock = clock
        self._windows: dict[_Kind, _Window] = {}
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False) or (record.levelno < logging.WARNING and not record.exc_info):
            return True
        now = self._clock()
        with self._lock:
            summaries = self._sweep(now) if now >= self._next_sweep else []
            keep = self._count(_kind(record), now)
        for summary in summaries:
            self._report(summary)
        return keep

    def flush(self) -> None:
        """Report every count held back so far (at shutdown, say)."""
        with self._lock:
            summaries = [self._summary(kind, w, self._clock()) for kind, w in self._windows.items() if w.held]
            self._windows.clear()
        for summary in summaries:
            self._report(summary)

    def _count(self, kind: _Kind, now: float) -> bool:
        window = self._windows.get(kind)
        if window is None:
            if len(self._windows) >= self._max_kinds:
                return True  # too many kinds to track: let it through rather than grow without bound
            window = self._windows[kind] = _Window(started=now)
        if window.passed < self._burst:
            window.passed += 1
            return True
        window.held += 1
        return False

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Close the windows that ran out; a summary for each that held records back."""
        self._next_sweep = now + min(1.0, self._interval)
        summaries = []
        for kind, window in list(self._windows.items()):
            if now - window.started >= self._interval:
                del self._windows[kind]
                if window.held:
                    summaries.append(self._summary(kind, window, now))
        return summaries

    @staticmethod
    def _summary(kind: _Kind, window: _Window, now: float) -> logging.LogRecord:
        name, template, exc_type = kind
        what = f"{template!r}" + (f" ({exc_type})" if exc_type else "")
        return logging.makeLogRecord({
            "name": name, "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": "%d more like %s in the last %.0f s were not logged",
            "args": (window.held, what, now - window.started), _SUMMARY: True,
        })


def _kind(record: logging.LogRecord) -> _Kind:
    # asyncio's handler logs pre-formatted text; its first line is the stable part.
    template = str(record.msg).split("\n", 1)[0][:200]
    exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] is not None else ""
    return record.name, template, exc_type


def configure(level: str | int, fmt: str, stream: TextIO | None = None,
              handler: logging.Handler | None = None) -> logging.Handler:
    """Send the root logger's records through one SafeFormatter + RepeatFilter handler.

    The handler writes to ``stream`` (stderr by default) unless one is given (the journald handler).
    Replaces a handler an earlier call installed; returns the new one.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "edged_handler", False)]:
        root.removeHandler(old)
        old.close()
    if handler is None:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.edged_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(SafeFormatter(fmt))
    handler.addFilter(RepeatFilter(report=handler.handle))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
