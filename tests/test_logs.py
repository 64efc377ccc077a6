"""edged.logs: control characters never reach the log raw; a flood of one error logs a bounded number of lines."""

from __future__ import annotations

import io
import logging
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.logs import RepeatFilter, SafeFormatter, configure, escape
from tests.configs import daemon_config, write_config
from tests.daemon import run_daemon
from tests.test_http import encoded
from tests.test_sandbox import m_log
from tests.wat import write_wasm

CSI = "\u009b"  # a one-character Control Sequence Introducer: U+009B
HOSTILE = f"cam{CSI}31m\x1b[2J\x07\x00\r\nFAKE edged: forged line\x7f\udcff\tend"


def test_escape_covers_c0_c1_del_and_surrogates_but_not_tab() -> None:
    out = escape(HOSTILE)
    assert out == "cam\\x9b31m\\x1b[2J\\x07\\x00\\r\\nFAKE edged: forged line\\x7f\\udcff\tend"
    assert escape("\t") == "\t"
    for code in [*range(0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0)]:
        out = escape(chr(code))
        assert out.startswith("\\"), hex(code)
        assert out.isascii()
        assert out.isprintable()
    assert escape("plain é ü 漢字 ok") == "plain é ü 漢字 ok"
    assert escape("a\nb\rc", keep_newlines=True) == "a\nb\\rc"


def _line(record_args: tuple[object, ...], msg: str = "camera %s said %r") -> str:
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("edged.test", logging.WARNING, __file__, 1, msg, record_args, None)
    return formatter.format(record)


def test_formatter_escapes_message_and_args() -> None:
    line = _line((HOSTILE, HOSTILE))
    assert "\n" not in line
    assert not any(0x80 <= ord(ch) <= 0x9F or (ord(ch) < 0x20 and ch != "\t") for ch in line)
    assert "\\x9b31m" in line
    assert _line((), msg=f"template itself {CSI}2J").endswith("template itself \\x9b2J")


def test_formatter_keeps_traceback_lines_but_escapes_their_text() -> None:
    formatter = SafeFormatter("%(message)s")
    try:
        raise ValueError(f"bad {CSI}1m name\x1b]0;title\x07")
    except ValueError:
        record = logging.LogRecord("edged.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    lines = text.split("\n")
    assert lines[0] == "failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad \\x9b1m name\\x1b]0;title\\x07"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str = "boom on %s", args: tuple[object, ...] = ("x",), exc: type[BaseException] | None = ValueError,
            name: str = "edged.test", level: int = logging.ERROR) -> logging.LogRecord:
    exc_info = (exc, exc("e"), None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def test_repeat_filter_lets_a_burst_through_then_one_summary_per_interval() -> None:
    clock = Clock()
    reported: list[logging.LogRecord] = []
    flt = RepeatFilter(reported.append, burst=3, interval=10.0, clock=clock)
    passed = [flt.filter(_record(args=(i,))) for i in range(100)]
    assert passed == [True] * 3 + [False] * 97  # the args differ; the template is the kind
    assert reported == []
    # Another kind (other template, other exception type, other logger) has its own window.
    assert flt.filter(_record(msg="other %s"))
    assert flt.filter(_record(exc=KeyError))
    assert flt.filter(_record(name="edged.other"))
    clock.now += 10.0
    assert flt.filter(_record())  # a new window: the summary comes first
    assert len(reported) == 1
    summary = reported[0]
    assert summary.levelno == logging.WARNING
    assert summary.name == "edged.test"
    assert summary.getMessage().startswith("97 more like 'boom on %s' (ValueError) in the last 10 s")
    assert flt.filter(summary)  # its own summaries always pass


def test_repeat_filter_leaves_plain_info_alone_and_flush_reports_held_counts() -> None:
    clock = Clock()
    reported: list[logging.LogRecord] = []
    flt = RepeatFilter(reported.append, burst=1, interval=60.0, clock=clock)
    assert all(flt.filter(_record(exc=None, level=logging.INFO)) for _ in range(50))
    assert [flt.filter(_record(exc=None, level=logging.WARNING)) for _ in range(4)] == [True, False, False, False]
    flt.flush()
    assert [r.getMessage().split(" ")[0] for r in reported] == ["3"]
    assert flt.filter(_record(exc=None, level=logging.WARNING))  # flush started afresh


def test_repeat_filter_tracks_a_bounded_number_of_kinds() -> None:
    flt = RepeatFilter(lambda r: None, burst=1, interval=60.0, max_kinds=10, clock=Clock())
    for i in range(1000):
        assert flt.filter(_record(msg=f"distinct {i}"))
    assert len(flt._windows) == 10  # noqa: SLF001 (the bound is the point)


@pytest.fixture
def configured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure("INFO", "%(levelname)s %(name)s: %(message)s", stream)
    try:
        yield stream, handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_flood_of_identical_exceptions_logs_a_bounded_number_of_lines(
        configured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = configured
    log = logging.getLogger("edged.flood")
    for i in range(20_000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            log.exception("accept failed on fd %d", i)
    logging.getLogger("edged.flood").warning("camera %s", f"x{CSI}")
    for flt in handler.filters:
        assert isinstance(flt, RepeatFilter)
        flt.flush()
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last)") == 5
    assert "19995 more like 'accept failed on fd %d' (OSError)" in text
    assert "WARNING edged.flood: camera x\\x9b" in text
    assert len(text.splitlines()) < 60


def test_the_daemon_log_escapes_guest_text_and_caps_its_floods(tmp_path: Path) -> None:
    # A guest writes a warning with terminal escapes (C1 CSI and ESC) on each of 20 calls.
    module = write_wasm(tmp_path, "noisy", m_log(30, f"cam{CSI}31m \x1b[2J done"))
    config = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state",
                                                                 functions={"noisy": {"module": module}}))
    with run_daemon(config) as d:
        for _ in range(20):
            request = urllib.request.Request(f"{d.url}/v1/functions/noisy", data=encoded("PNG"))
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200
    text = d.log
    assert CSI not in text
    assert "\x1b" not in text
    assert text.count("cam\\x9b31m \\x1b[2J done") == 5
    assert "15 more like '%s' in the last" in text  # reported when the daemon stopped
