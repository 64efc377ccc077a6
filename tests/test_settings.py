"""Settings: TOML + environment, unknown keys, cross-field checks, check-config output."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from edged.settings import ConfigError, Settings, load_settings
from edged.wasm.host.urls import normalize_origin


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edged.toml"
    path.write_text(text)
    return path


def test_toml_relative_paths_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, """
state_dir = "state"
device_id = "cam-gw"
[http]
port = 9000
[functions.g]
module = "mods/g.wasm"
preopens = [{host = "data", guest = "/data"}]
allowed_hosts = ["https://api.example.com", "http://127.0.0.1:8081"]
""")
    monkeypatch.setenv("EDGED_HTTP__PORT", "9100")
    monkeypatch.setenv("EDGED_POOL__WORKERS", "3")
    s = load_settings(cfg)
    assert s.state_dir == tmp_path / "state"
    assert s.http.port == 9100
    assert s.pool.workers == 3
    fn = s.functions["g"]
    assert fn.module == tmp_path / "mods" / "g.wasm"
    assert fn.preopens[0].host == tmp_path / "data"
    assert fn.preopens[0].writable is False
    assert fn.allowed_hosts == ("https://api.example.com:443", "http://127.0.0.1:8081")
    assert s.mqtt_client_id == "edged-cam-gw"


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
colour = "blue"
[http]
prt = 1
[functions.g]
module = "g.wasm"
timeout_ms = 0
abi = "wasi-command"
allowed_hosts = ["ftp://x"]
""")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    keys = {key for key, _ in info.value.problems}
    assert {"colour", "http.prt", "functions.g.timeout_ms"} <= keys
    assert any(key.startswith("functions.g.allowed_hosts") for key in keys)


def test_cross_field_checks(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
[functions.g]
module = "g.wasm"
abi = "wasi-command"
""")
    with pytest.raises(ConfigError, match="input"):
        load_settings(cfg)
    cfg = write(tmp_path, """
[functions.c]
module = "c.wasm"
models = ["nope"]
""")
    with pytest.raises(ConfigError, match=r"models\.nope"):
        load_settings(cfg)


@pytest.mark.parametrize(("url", "origin"), [
    ("https://API.example.com", "https://api.example.com:443"),
    ("http://127.0.0.1", "http://127.0.0.1:80"),
    ("http://[::1]:81", "http://[::1]:81"),
])
def test_normalize_origin(url: str, origin: str) -> None:
    assert normalize_origin(url) == origin


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://u:p@host", "http://host:99999"])
def test_normalize_origin_rejects(url: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        normalize_origin(url)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_check_config_cli(tmp_path: Path) -> None:
    bad = write(tmp_path, '[http]\nport = "x"\n[functions.g]\nmodule = "missing.wasm"\nbogus = 1\n')
    out = run_cli("check-config", "--config", str(bad))
    assert out.returncode == 78
    assert "http.port" in out.stderr
    assert "functions.g.bogus" in out.stderr
    missing = write(tmp_path, '[functions.g]\nmodule = "missing.wasm"\n')
    out = run_cli("--config", str(missing), "check-config")
    assert out.returncode == 78
    assert "functions.g.module: no such file" in out.stderr
    repo_config = Path(__file__).parent.parent / "config" / "edged.toml"
    out = run_cli("check-config", "--config", str(repo_config))
    assert out.returncode == 0, out.stderr
    assert "config ok" in out.stdout


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested and typing.get_origin(field.annotation) is not dict:
            keys |= _leaf_keys(nested[0], f"{prefix}{name}.")
        elif typing.get_origin(field.annotation) is dict:
            value_type = typing.get_args(field.annotation)[1]
            keys |= _leaf_keys(value_type, f"{prefix}{name}.*.")
        else:
            keys.add(prefix + name)
    return keys


def _toml_keys(value: object, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for name, sub in value.items():
            generic = "*" if prefix in ("functions.", "models.") else name
            keys |= _toml_keys(sub, f"{prefix}{generic}.") if isinstance(sub, dict | list) and sub and \
                not (isinstance(sub, list) and not isinstance(sub[0], dict)) else {f"{prefix}{generic}"}
    elif isinstance(value, list):
        for item in value:
            keys |= _toml_keys(item, prefix)
    return keys


def test_example_config_is_valid_and_shows_every_key() -> None:
    example = Path(__file__).parent.parent / "config" / "edged.example.toml"
    settings = load_settings(example)
    assert settings.functions["classify"].models == ("efficientnet_lite0",)
    text = example.read_text()
    shown = _toml_keys(tomllib.loads(text))
    # Keys shown only as comments (secrets, optional TLS) count as documented too.
    commented = {line.lstrip("# ").split(" ")[0] for line in text.splitlines() if line.startswith("# ")}
    missing = {key for key in _leaf_keys(Settings)
               if key not in shown and key.rsplit(".", 1)[-1] not in commented}
    assert not missing, f"config/edged.example.toml does not show: {sorted(missing)}"
