"""The command line as an operator meets it: exit codes, one-line errors, --version, the state-dir lock,
check-config loading every module and model, and what /metrics adds (process collectors, build info)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from edged.cli import DEFAULT_CONFIG, EXIT_BUSY, EXIT_CONFIG
from edged.metrics import Metrics
from tests.assets import CHELSEA as PHOTO
from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.assets import MODEL, REPO
from tests.configs import daemon_config, write_config
from tests.daemon import run_daemon

pytestmark = pytest.mark.timeout(120)

DEV_CONFIG = REPO / "config" / "edged.toml"


def edged(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("EDGED_CONFIG", "JOURNAL_STREAM")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=90,
                          env=full_env, cwd=cwd or REPO, check=False)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_version_names_edged_wasmtime_and_the_tflite_runtime() -> None:
    out = edged("--version")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"edged {metadata.version('edged')}" in text
    assert f"wasmtime {metadata.version('wasmtime')}" in text
    runtimes = [f"{p} {metadata.version(p)}" for p in ("ai-edge-litert", "tflite-runtime")
                if any(d.metadata["Name"] == p for d in metadata.distributions())]
    assert f"TFLite runtime {runtimes[0] if runtimes else 'none'}" in text


@pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason=f"{DEFAULT_CONFIG} exists on this machine")
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_no_config_file_is_a_config_error_naming_what_was_tried(command: str, tmp_path: Path) -> None:
    out = edged(command, cwd=tmp_path)
    assert out.returncode == EXIT_CONFIG, out.stderr
    assert len(lines(out.stderr)) == 1, out.stderr
    assert "--config" in out.stderr
    assert "$EDGED_CONFIG" in out.stderr
    assert str(DEFAULT_CONFIG) in out.stderr
    given = edged(command, "--config", str(tmp_path / "nope.toml"))
    assert given.returncode == EXIT_CONFIG
    assert str(tmp_path / "nope.toml") in given.stderr


def test_usage_errors_exit_2_and_config_errors_78(tmp_path: Path) -> None:
    assert edged("bogus").returncode == 2
    assert edged("invoke", "--config", str(DEV_CONFIG)).returncode == 2  # NAME and FILE missing
    bad = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state", colour="blue"))
    for command in ("run", "check-config"):
        out = edged(command, "--config", str(bad))
        assert out.returncode == EXIT_CONFIG, out.stderr
        assert "colour" in out.stderr
        assert "Traceback" not in out.stderr


def test_every_subcommand_shows_config_in_its_help() -> None:
    for command in ("run", "check-config", "functions", "invoke"):
        out = edged(command, "--help")
        assert out.returncode == 0
        assert "--config" in out.stdout, f"{command} --help: {out.stdout}"


def test_check_config_loads_every_module_and_model(tmp_path: Path) -> None:
    (tmp_path / "junk.wasm").write_bytes(b"\0asm garbage, not a module")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all" * 8)
    config = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state",
        functions={"good": {"module": GRAYSCALE}, "junk": {"module": tmp_path / "junk.wasm"},
                   "classify": {"module": GRAYSCALE, "models": ["junk"]}},
        models={"junk": {"path": tmp_path / "junk.tflite"}, "fine": {"path": MODEL}},
    ))
    out = edged("check-config", "--config", str(config))
    assert out.returncode == EXIT_CONFIG, out.stdout + out.stderr
    problems = [line for line in out.stderr.splitlines() if line.startswith("config error: ")]
    keys = {line.split(": ")[1] for line in problems}
    assert keys == {"functions.junk.module", "models.junk.path"}, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state" / "cache").exists()  # checking writes nothing of the daemon's
    fixed = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state", functions={"good": {"module": GRAYSCALE}}, models={"fine": {"path": MODEL}}))
    out = edged("check-config", "--config", str(fixed))
    assert out.returncode == 0, out.stderr
    assert "config ok: 1 functions, 1 models" in out.stdout


def test_invoke_user_errors_are_one_line(tmp_path: Path) -> None:
    env = {"EDGED_STATE_DIR": str(tmp_path / "state")}
    unknown = edged("--config", str(DEV_CONFIG), "invoke", "grayscal", str(PHOTO), env=env)
    assert unknown.returncode == 1
    assert len(lines(unknown.stderr)) == 1, unknown.stderr
    assert "grayscale, grayscale-cmd" in unknown.stderr  # the real names, to pick from
    missing = edged("--config", str(DEV_CONFIG), "invoke", "grayscale", str(tmp_path / "no.jpg"), env=env)
    assert missing.returncode == 1
    assert len(lines(missing.stderr)) == 1, missing.stderr
    assert f"cannot read {tmp_path / 'no.jpg'}: No such file or directory" in missing.stderr
    unwritable = edged("--config", str(DEV_CONFIG), "invoke", "grayscale", str(PHOTO), "-o",
                       str(tmp_path / "no-such-dir" / "out.png"), env=env)
    assert unwritable.returncode == 1
    assert len(lines(unwritable.stderr)) == 1, unwritable.stderr
    assert "cannot write" in unwritable.stderr
    assert "No such file or directory" in unwritable.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state", http={"port": port}))
        out = edged("run", "--config", str(config))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    said = [line for line in out.stderr.splitlines() if "in use" in line]
    assert len(said) == 1, out.stderr
    assert f"port {port} is already in use" in said[0]


def test_one_daemon_per_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "edged.toml", daemon_config(state))
    with run_daemon(config) as first:
        assert (state / "edged.lock").read_text().strip() == str(first.proc.pid)
        second = edged("run", "--config", str(config))
        assert second.returncode == EXIT_BUSY
        assert lines(second.stdout + second.stderr) == lines(second.stderr)
        assert len(lines(second.stderr)) == 1, second.stderr
        assert str(state) in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr
        # The first daemon is unharmed, and shows what /metrics now adds.
        with urllib.request.urlopen(first.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "process_resident_memory_bytes" in metrics
        assert "process_open_fds" in metrics
        assert 'edged_build_info{tflite="' in metrics
    assert first.proc.returncode == 0
    # Released when its holder exits: the next daemon starts.
    with run_daemon(config) as again:
        assert (state / "edged.lock").read_text().strip() == str(again.proc.pid)


def test_metrics_build_info_and_process_collectors() -> None:
    text = generate_latest(Metrics().registry).decode()
    info = next(line for line in text.splitlines() if line.startswith("edged_build_info{"))
    assert f'version="{metadata.version("edged")}"' in info
    assert f'wasmtime="{metadata.version("wasmtime")}"' in info
    assert 'tflite="' in info
    assert info.endswith(" 1.0")
    for name in ("process_cpu_seconds_total", "process_start_time_seconds", "python_info",
                 "python_gc_objects_collected_total"):
        assert f"\n{name}" in text, name
