"""Idle means idle: with nothing to do (MQTT and Dapr disabled) the daemon's threads, all together, wake
at most 5 times a second, counted from the kernel's context-switch counters of every thread."""

from __future__ import annotations

import io
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.configs import daemon_config, write_config
from tests.daemon import run_daemon

pytestmark = pytest.mark.timeout(120)

MEASURE_SECONDS = 4.0
MAX_WAKEUPS_PER_SECOND = 5


def switches(pid: int) -> dict[str, int]:
    """Voluntary plus involuntary context switches of each of ``pid``'s threads, by thread id."""
    counts: dict[str, int] = {}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        counts[status.parent.name] = sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return counts


def test_idle_daemon_wakes_at_most_five_times_a_second(tmp_path: Path) -> None:
    config = daemon_config(tmp_path / "state", functions={"gray": {"module": GRAYSCALE}})
    path = write_config(tmp_path / "edged.toml", config)
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, format="PNG")
    with run_daemon(path) as d:
        with urllib.request.urlopen(d.url + "/readyz", timeout=30) as resp:
            assert resp.status == 200
        # One call first: the epoch ticker and a worker have run, and must have gone back to sleep.
        req = urllib.request.Request(d.url + "/v1/functions/gray", data=out.getvalue(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        before = switches(d.proc.pid)
        time.sleep(MEASURE_SECONDS)  # the interval measured, not a wait for something to happen
        after = switches(d.proc.pid)
        assert d.proc.poll() is None
    woke = {tid: n - before.get(tid, 0) for tid, n in after.items() if n - before.get(tid, 0)}
    rate = sum(woke.values()) / MEASURE_SECONDS
    assert rate <= MAX_WAKEUPS_PER_SECOND, f"{rate:.1f} wakeups/s while idle, by thread id: {woke}"
