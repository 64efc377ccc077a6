"""`make install` / `make uninstall` into a scratch root (DESTDIR), as cross/install.sh lays edged out.

The venv is left out (INSTALL_ARGS=--no-venv): building it installs every dependency from PyPI, minutes
and the network; everything else (functions, model, config, credentials directory, units) is checked,
and the installed config is checked to name files the install put there.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edged.settings import load_settings

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")]

REPO = Path(__file__).resolve().parents[1]
ANALYZE = shutil.which("systemd-analyze")


def make(target: str, dest: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["make", "-s", target, f"DESTDIR={dest}", "INSTALL_ARGS=--no-venv"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def inside(dest: Path, path: Path) -> Path:
    return dest / path.relative_to("/")


def test_make_install_and_uninstall_in_a_scratch_root(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    out = make("install", dest)
    assert "no daemon-reload" in out.stdout  # systemd is not asked to reload a scratch root
    assert (dest / "opt/edged/README.md").read_bytes() == (REPO / "README.md").read_bytes()
    for wasm in REPO.glob("functions/*/*.wasm"):
        assert (dest / "usr/lib/edged/functions" / wasm.parent.name / wasm.name).read_bytes() == wasm.read_bytes()
    config = dest / "etc/edged/edged.toml"
    assert config.read_text() == (REPO / "config/edged.example.toml").read_text()
    creds = dest / "etc/edged/credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    for unit in (REPO / "systemd").glob("*.service"):
        assert (dest / "etc/systemd/system" / unit.name).read_text() == unit.read_text()

    # The installed config names what the install put down: every module, model and labels file.
    settings = load_settings(config)
    named = [fn.module for fn in settings.functions.values()]
    named += [p for m in settings.models.values() for p in (m.path, m.labels) if p is not None]
    assert named
    for path in named:
        assert inside(dest, path).is_file(), f"{path} is not installed"

    # A config of the operator's survives a second install.
    config.write_text("# mine\n")
    out = make("install", dest)
    assert "kept the existing" in out.stdout
    assert config.read_text() == "# mine\n"

    if ANALYZE is not None:
        unit = dest / "etc/systemd/system/edged.service"
        verify = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                                timeout=60, check=False)
        # No venv here: only the missing ExecStart binary may be reported.
        assert verify.returncode == 0 or "is not executable" in verify.stderr, verify.stderr
        assert "Invalid" not in verify.stderr
        assert "Unknown key" not in verify.stderr

    make("uninstall", dest)
    assert not (dest / "opt/edged").exists()
    assert not (dest / "usr/lib/edged").exists()
    assert not list((dest / "etc/systemd/system").glob("*.service"))
    assert config.read_text() == "# mine\n"  # config and credentials stay
    assert creds.is_dir()
