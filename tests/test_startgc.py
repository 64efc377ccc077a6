"""The cyclic collector paused for start-up (edged.startgc): off from the entry to ready, then back on.

Each check runs in a fresh interpreter, since pausing and freezing change the whole process's collector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.assets import REPO
from tests.configs import daemon_config, write_config


def _python(code: str, *args: str) -> object:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LIBRARY = """
import gc, json
from edged import startgc
startgc.resume(freeze=True)  # never paused: a library user's collector is left alone
print(json.dumps([gc.isenabled(), gc.get_freeze_count()]))
"""


def test_resume_without_pause_changes_nothing() -> None:
    assert _python(LIBRARY) == [True, 0]


PAUSED = """
import gc, json
from edged import startgc
startgc.pause()
during = gc.isenabled()
kept = [[] for _ in range(1000)]
startgc.resume(freeze=True)
print(json.dumps([during, gc.isenabled(), gc.get_freeze_count() >= len(kept)]))
"""


def test_paused_until_resume_then_start_objects_are_frozen() -> None:
    assert _python(PAUSED) == [False, True, True]


# The daemon's own path: the entry pauses, run() resumes once ready (before it waits for a signal).
DAEMON = """
import asyncio, gc, json, signal, sys
from pathlib import Path
from edged import startgc
startgc.pause()
from edged import app
from edged.settings import load_settings

seen = []
real = app.trim_heap
def after_ready():  # run() trims the heap right after it resumed the collector
    seen.append([gc.isenabled(), gc.get_freeze_count() > 10000])
    real()
    signal.raise_signal(signal.SIGTERM)
app.trim_heap = after_ready
asyncio.run(app.run(load_settings(Path(sys.argv[1]))))
print(json.dumps(seen))
"""


def test_the_daemon_resumes_collection_once_ready(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state",
                                                             functions={"grayscale": {"module": GRAYSCALE}}))
    assert _python(DAEMON, str(cfg)) == [[True, True]]


CLI = """
import gc, json, sys
from edged.__main__ import main
sys.argv = ["edged", "check-config", "--config", sys.argv[1]]
code = main()
print(json.dumps([code, gc.isenabled()]))
"""


def test_a_short_command_runs_with_the_collector_on(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state",
                                                             functions={"grayscale": {"module": GRAYSCALE}}))
    assert _python(CLI, str(cfg)) == [0, True]
