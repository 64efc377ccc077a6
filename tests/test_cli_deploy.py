"""The command line sees the functions deployed over the API (``[deploy] enabled``, state_dir's registry):
``edged functions`` lists them, ``edged invoke`` runs them, ``edged check-config`` checks the registry as
the daemon's start does (a module that no longer compiles is a config error; a missing module or a grant
past today's ceilings leaves that function out, with the daemon's ERROR line)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edged.cli import EXIT_CONFIG
from edged.deploy import Deployer
from edged.settings import load_settings
from tests.configs import daemon_config, write_config
from tests.test_cli import GRAYSCALE, PHOTO, edged, lines
from tests.test_deploy import ref
from tests.test_deploy_store import Target

pytestmark = pytest.mark.timeout(180)


def deploy_f(state: Path, **spec: Any) -> Path:
    """Deploy GRAYSCALE as ``f`` into ``state``'s registry, as the API would; the stored module's path."""
    settings = load_settings(state_dir=state, deploy={"enabled": True})
    deployer = Deployer(Target(settings), CollectorRegistry())
    wasm = GRAYSCALE.read_bytes()

    async def deploy() -> None:
        await deployer.upload(ref(wasm), wasm, ref(wasm)[7:])
        await deployer.define("f", {"module": ref(wasm), "memory_mb": 32, **spec})

    asyncio.run(deploy())
    return deployer.modules.path(ref(wasm)[7:])


def config(tmp_path: Path, **deploy: Any) -> str:
    cfg = daemon_config(tmp_path / "state", functions={"gray": {"module": GRAYSCALE, "memory_mb": 32}},
                        deploy={"enabled": True, **deploy})
    name = "-".join(f"{key}-{value}" for key, value in deploy.items()) or "default"
    return str(write_config(tmp_path / f"edged-{name}.toml", cfg))


def test_functions_and_invoke_see_the_api_functions(tmp_path: Path) -> None:
    deploy_f(tmp_path / "state")
    on, off = config(tmp_path), config(tmp_path, enabled=False)
    listed = edged("--config", on, "functions")
    assert listed.returncode == 0, listed.stderr
    assert {fn["name"] for fn in json.loads(listed.stdout)} == {"gray", "f"}
    out = tmp_path / "out.png"
    done = edged("--config", on, "invoke", "f", str(PHOTO), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    unknown = edged("--config", on, "invoke", "g", str(PHOTO))
    assert json.loads(unknown.stderr)["detail"].endswith("the functions are: f, gray")
    # With deploy off the daemon loads no API function; neither does the command line.
    assert {fn["name"] for fn in json.loads(edged("--config", off, "functions").stdout)} == {"gray"}
    assert json.loads(edged("--config", off, "invoke", "f", str(PHOTO)).stderr)["error"] == "unknown_function"


def test_check_config_checks_the_registry_as_the_daemon_start_does(tmp_path: Path) -> None:
    module = deploy_f(tmp_path / "state")
    ok = edged("check-config", "--config", config(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "config ok: 2 functions (1 deployed over the API)" in ok.stdout
    # Ceilings lowered since the deploy: f is left out, with the daemon's line; the config is still good.
    lowered = edged("check-config", "--config", config(tmp_path, max_memory_mb=16))
    assert lowered.returncode == 0, lowered.stderr
    assert "deployed function f (version 1) is not loaded: functions.f.memory_mb: 32 is over " \
           "deploy.max_memory_mb = 16" in lowered.stderr
    assert "1 functions (0 deployed over the API; 1 more not loaded" in lowered.stdout
    # A stored module that no longer compiles would stop the daemon at start: a config error here too.
    wasm = module.read_bytes()
    module.write_bytes(b"\0asm\x01\0\0\0 garbage")
    broken = edged("check-config", "--config", config(tmp_path))
    assert broken.returncode == EXIT_CONFIG, broken.stderr
    assert any(line.startswith("config error: functions.f") for line in lines(broken.stderr)), broken.stderr
    module.unlink()
    missing = edged("check-config", "--config", config(tmp_path))
    assert missing.returncode == 0, missing.stderr
    assert f"deployed function f (version 1) is not loaded: its module {ref(wasm)} is missing" in missing.stderr
    registry = tmp_path / "state" / "deploy" / "functions.json"
    registry.write_text("{not json")
    unreadable = edged("check-config", "--config", config(tmp_path))
    assert unreadable.returncode == EXIT_CONFIG
    assert "cannot read the deploy registry" in unreadable.stderr
    assert lines(unreadable.stderr) == [line for line in lines(unreadable.stderr) if "deploy registry" in line]
    assert edged("--config", config(tmp_path), "functions").returncode == EXIT_CONFIG
