"""The shipped unit files pass systemd-analyze (verify and an offline security review)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit as installed: its /opt/edged paths pointed at this checkout's venv."""
    text = (UNITS / name).read_text()
    venv_bin = str(Path(sys.executable).parent)
    text = text.replace("/opt/edged/.venv/bin", venv_bin)
    for binary in re.findall(r"Exec\w+=(/\S+)", text):
        if not Path(binary).exists():
            pytest.fail(f"{name}: {binary} does not exist after path substitution")
    unit = tmp_path / name
    unit.write_text(text)
    return unit


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies(tmp_path: Path, name: str) -> None:
    unit = installed_copy(tmp_path, name) if name == "edged.service" else UNITS / name
    out = subprocess.run([str(ANALYZE), "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)
    problems = [line for line in out.stderr.splitlines()
                if "Unknown key" in line or "Invalid" in line or "Failed to parse" in line]
    assert out.returncode == 0 or "is not executable" in out.stderr, out.stderr
    assert not problems, out.stderr


def test_edged_unit_is_hardened(tmp_path: Path) -> None:
    unit = installed_copy(tmp_path, "edged.service")
    out = subprocess.run([str(ANALYZE), "security", "--offline=true", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 1.5, out.stdout
    text = unit.read_text()
    assert "Type=notify" in text
    assert "MemoryDenyWriteExecute=yes" not in text  # wasmtime needs W^X toggling


def _settings(name: str) -> list[tuple[str, str]]:
    lines = (UNITS / name).read_text().splitlines()
    return [(k, v) for k, _, v in (line.partition("=") for line in lines if "=" in line and line[0].isalpha())]


def test_edged_unit_operates_as_a_service() -> None:
    settings = _settings("edged.service")
    keys = dict(settings)
    assert keys["RestartPreventExitStatus"] == "78"  # a config error (EX_CONFIG) is not restarted
    assert "ExecStartPre" not in keys  # RestartPreventExitStatus= sees the main process only
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["LimitNOFILE"] == "8192"
    # Every credential may be missing: each LoadCredential= has a SetCredential= default of the same name,
    # whose value edged reads as empty (a line end only).
    loaded = {v.split(":", 1)[0] for k, v in settings if k == "LoadCredential"}
    defaults = {v.split(":", 1)[0]: v.split(":", 1)[1] for k, v in settings if k == "SetCredential"}
    assert loaded == {"mqtt-password", "dapr-token", "http-token"}
    assert loaded == set(defaults)
    assert set(defaults.values()) == {"\\n"}
