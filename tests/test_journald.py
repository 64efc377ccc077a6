"""Logs under journald: real priorities and structured fields, received on a real datagram socket.

libsystemd sends to the fixed path /run/systemd/journal/socket, so the daemon runs in a private mount
namespace (``unshare -m``) with a directory of this test bind-mounted over /run/systemd; the test binds
an AF_UNIX datagram socket there and parses journald's native protocol (``KEY=value`` lines, and
``KEY\\n<u64 LE length><value>\\n`` for values with a newline; a datagram too big is a memfd passed
with SCM_RIGHTS). ``$JOURNAL_STREAM`` names the daemon's stderr pipe, as systemd's would.
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from edged.journal import under_journald
from tests.assets import CHELSEA as PHOTO
from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.assets import REPO
from tests.configs import daemon_config, write_config
from tests.waiting import wait_until
from tests.wat import Wat, write_wasm

Entry = dict[str, bytes]


def parse_entry(data: bytes) -> Entry:
    """One native-protocol datagram as its fields (the last value of a repeated key wins)."""
    fields: Entry = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value
            at = end + 1
        else:  # a field name alone: a little-endian u64 length, the value, a newline
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            fields[line.decode()] = data[start:start + size]
            assert data[start + size:start + size + 1] == b"\n", "binary field not closed by a newline"
            at = start + size + 1
    return fields


class Journal:
    """A stand-in journald: a datagram socket at ``root/journal/socket``, entries parsed as they come."""

    def __init__(self, root: Path) -> None:
        (root / "journal").mkdir(parents=True)
        self.root = root
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(root / "journal" / "socket"))
        self.sock.settimeout(0.2)
        self.entries: list[Entry] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="journal", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        fds = array.array("i")
        while not self._stop.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
            except TimeoutError:
                continue
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = int.from_bytes(payload[:4], sys.byteorder, signed=True)
                    try:
                        data = os.pread(fd, os.fstat(fd).st_size, 0)
                    finally:
                        os.close(fd)
            with self._lock:
                self.entries.append(parse_entry(data))

    def find(self, message_part: str) -> list[Entry]:
        with self._lock:
            return [e for e in self.entries if message_part.encode() in e.get("MESSAGE", b"")]

    def wait_for(self, message_part: str, timeout: float = 30) -> Entry:
        wait_until(lambda: bool(self.find(message_part)), timeout,
                   lambda: f"{message_part!r} in the journal; it has {self.messages()}")
        return self.find(message_part)[0]

    def messages(self) -> list[str]:
        with self._lock:
            return [e.get("MESSAGE", b"").decode("utf-8", "replace") for e in self.entries]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/run/systemd").is_dir():
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /run/systemd"], capture_output=True,
                           timeout=30, check=False)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m to bind /run/systemd")


class Run:
    """A process under the stand-in journal, and the text it wrote to its stdout/stderr pipe."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.chunks: list[bytes] = []

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


@contextmanager
def under_journal(journal: Journal, argv: Sequence[str], env: dict[str, str]) -> Iterator[Run]:
    """Run ``argv`` with /run/systemd replaced by the journal's root and stdout+stderr on a pipe that
    ``$JOURNAL_STREAM`` names, as systemd connects a service's output."""
    read_end, write_end = os.pipe()
    stat = os.fstat(write_end)
    full_env = {**{k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")},
                **env, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount --bind "$1" /run/systemd && shift && '
         'exec "$@"', "sh", str(journal.root), *argv],
        stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end, env=full_env, cwd=REPO)
    os.close(write_end)
    run = Run(proc)
    reader = threading.Thread(target=lambda: run.chunks.extend(iter(lambda: os.read(read_end, 65536), b"")),
                              daemon=True)
    reader.start()
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        reader.join(timeout=5)
        os.close(read_end)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "run-systemd")
    try:
        yield j
    finally:
        j.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, data: bytes) -> int:
    req = urllib.request.Request(url, data=data, method="POST", headers={"X-Camera": "cam7"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@needs_namespace
@pytest.mark.timeout(120)
def test_daemon_logs_priorities_and_fields_to_journald(tmp_path: Path, journal: Journal) -> None:
    trap = write_wasm(tmp_path, "trap", Wat().frame_module("unreachable"))
    config = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state",
        mqtt={"enabled": True, "port": _closed_port(), "reconnect_min_delay": 5.0},
        sync={"include_images": True, "max_event_bytes": 1024},
        functions={"grayscale": {"module": GRAYSCALE}, "trap": {"module": trap}},
    ))
    argv = [sys.executable, "-m", "edged", "run", "--config", str(config)]
    with under_journal(journal, argv, {}) as run:
        listening = journal.wait_for("listening on http://")
        assert listening["PRIORITY"] == b"6"
        assert listening["SYSLOG_IDENTIFIER"] == b"edged"
        assert listening["LOGGER"] == b"edged.app"
        url = listening["MESSAGE"].decode().split("listening on ", 1)[1].strip()

        down = journal.wait_for("mqtt: disconnected")
        assert down["PRIORITY"] == b"4"  # a component going down is a warning, not info
        assert down["COMPONENT"] == b"mqtt"

        assert _post(url + "/v1/functions/grayscale", b"not an image") == 400
        rejected = journal.wait_for("rejected http payload from cam7")
        assert (rejected["PRIORITY"], rejected["CAMERA"], rejected["ERROR_CODE"]) == (b"4", b"cam7", b"bad_image")

        assert _post(url + "/v1/functions/trap", PHOTO.read_bytes()) == 500
        failed = journal.wait_for("function trap failed")
        assert (failed["PRIORITY"], failed["FUNCTION"], failed["ERROR_CODE"]) == (b"4", b"trap", b"trap")

        assert _post(url + "/v1/functions/grayscale", PHOTO.read_bytes()) == 200
        left_out = journal.wait_for("left out of the cloud event")
        assert left_out["PRIORITY"] == b"6"
        assert left_out["EVENT_ID"].decode() in left_out["MESSAGE"].decode()
        assert run.proc.poll() is None
    # Everything went to the journal: the pipe saw no log lines.
    assert "listening on" not in run.text, run.text
    stopped = journal.wait_for("stopped")
    assert stopped["PRIORITY"] == b"6"


LOGGING_SNIPPET = """
import logging
from edged.cli import _setup_logging

_setup_logging("INFO")
handler = logging.getLogger().handlers[0]
# As another part of edged may: its own Formatter and a Filter, on the handler.
handler.setFormatter(logging.Formatter("[fmt] %(message)s"))
handler.addFilter(lambda record: "drop me" not in record.getMessage())
log = logging.getLogger("edged.function.echo")
log.info("drop me")
log.error("guest says\\nhello", extra={"CAMERA": "cam9"})
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("edged.x").exception("it failed", extra={"EVENT_ID": "ev1"})
logging.getLogger("edged.x").info("done")
"""


@needs_namespace
@pytest.mark.timeout(60)
def test_handler_composes_with_formatters_filters_and_multiline_messages(journal: Journal) -> None:
    with under_journal(journal, [sys.executable, "-c", LOGGING_SNIPPET], {}) as run:
        journal.wait_for("done")
        assert run.proc.wait(timeout=30) == 0, run.text
    assert not journal.find("drop me")
    guest = journal.wait_for("guest says")
    assert guest["MESSAGE"] == b"[fmt] guest says\nhello"  # a newline: the binary form of the protocol
    assert (guest["PRIORITY"], guest["FUNCTION"], guest["CAMERA"]) == (b"3", b"echo", b"cam9")
    failed = journal.wait_for("it failed")
    assert failed["PRIORITY"] == b"3"
    assert failed["EVENT_ID"] == b"ev1"
    assert b"ValueError: boom" in failed["MESSAGE"]
    assert not {"msg", "args", "levelname"} & failed.keys()  # journal fields only, not every record attribute


def test_journal_stream_must_be_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    stat = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    assert under_journald()
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")  # inherited from a parent
    assert not under_journald()
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not under_journald()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not under_journald()
