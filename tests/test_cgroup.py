"""tests/cgroup.py against the kernel: OOM kills are counted, limits are seen from inside, the daemon runs in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.cgroup import memory_cgroup
from tests.configs import daemon_config, write_config
from tests.daemon import run_daemon

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _python(prefix: list[str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-c", code], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_process_allocating_past_the_limit_is_oom_killed_and_counted() -> None:
    with memory_cgroup(64 * MiB) as cg:
        done = _python(cg.prefix, "x = b'\\1' * (256 << 20); print('survived')")
        assert done.returncode == -9, done
        assert "survived" not in done.stdout
        assert cg.oom_kills() == 1


def test_a_process_within_the_limit_is_not_killed() -> None:
    with memory_cgroup(64 * MiB) as cg:
        done = _python(cg.prefix, "x = b'\\1' * (16 << 20); print('survived')")
        assert done.returncode == 0, done
        assert done.stdout.strip() == "survived"
        assert cg.oom_kills() == 0
        usage = cg.max_usage()
        assert usage is None or 16 * MiB <= usage <= 64 * MiB


def test_detect_memory_limit_sees_the_cgroup_it_runs_in() -> None:
    code = ("from edged.budget import detect_memory_limit, detect_work_budget\n"
            "from edged.settings import LimitsSettings\n"
            "print(detect_memory_limit(), detect_work_budget(LimitsSettings(reserve_mb=32)))")
    with memory_cgroup(96 * MiB) as cg:
        done = _python(cg.prefix, code)
        assert done.returncode == 0, done
        assert done.stdout.split() == [str(96 * MiB), str(64 * MiB)]


def test_the_daemon_runs_inside_the_cgroup(tmp_path: Path) -> None:
    config = tmp_path / "edged.toml"
    write_config(config, daemon_config(tmp_path / "state"))
    with memory_cgroup(512 * MiB) as cg, run_daemon(config, prefix=cg.prefix) as daemon:
        assert daemon.proc.pid in cg.pids()
        with urllib.request.urlopen(daemon.url + "/healthz", timeout=10) as resp:  # noqa: S310 (loopback)
            assert json.loads(resp.read())["status"] == "ok"
        assert cg.oom_kills() == 0
