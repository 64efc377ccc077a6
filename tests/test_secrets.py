"""The one credentials reader (edged.secrets) and its users: the HTTP bearer token, check-config. The
MQTT password and the Dapr token are exercised against a real broker and sidecar in test_mqtt.py and
test_outbox_sync.py."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from edged.app import App
from edged.cli import main
from edged.secrets import SecretError, read_secret, resolve_secret
from edged.settings import ConfigError, Settings, load_settings
from tests.configs import daemon_config, write_config


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "etc").mkdir()
    (tmp_path / "creds").mkdir()
    return tmp_path / "etc", tmp_path / "creds"


def test_the_configured_path_without_credentials_directory(places: tuple[Path, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    etc, _ = places
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (etc / "mqtt-password").write_text(" from etc \r\n")
    assert read_secret("mqtt.password_file", etc / "mqtt-password") == " from etc "  # only the line end goes


def test_credentials_directory_wins(places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    etc, creds = places
    (etc / "mqtt-password").write_text("from-etc\n")
    (creds / "mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("mqtt.password_file", etc / "mqtt-password") == "from-systemd"


def test_falls_back_to_the_path_when_the_credentials_directory_lacks_it(
        places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    etc, creds = places
    (etc / "dapr-token").write_text("from-etc\n")
    (creds / "other").write_text("unrelated")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("dapr.token_file", etc / "dapr-token") == "from-etc"


def test_missing_everywhere_is_a_clear_error_naming_both_places(
        places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    etc, creds = places
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(SecretError) as caught:
        read_secret("http.token_file", etc / "http-token")
    err = caught.value
    assert err.key == "http.token_file"
    assert [why for _, why in err.tried] == ["no such file", "no such file"]
    text = str(err)
    assert text.startswith("cannot read http.token_file: ")
    assert f"$CREDENTIALS_DIRECTORY/http-token ({creds / 'http-token'})" in text
    assert str(etc / "http-token") in text


def test_without_credentials_directory_the_error_says_so(places: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    etc, _ = places
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretError, match=r"\$CREDENTIALS_DIRECTORY is not set.*no such file"):
        read_secret("mqtt.password_file", etc / "mqtt-password")


def test_an_empty_secret_is_not_a_secret(places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    etc, creds = places
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    (creds / "dapr-token").write_text("\n")
    (etc / "dapr-token").write_text("")
    with pytest.raises(SecretError) as caught:
        read_secret("dapr.token_file", etc / "dapr-token")
    assert [why for _, why in caught.value.tried] == ["empty", "empty"]


def test_an_unreadable_file_names_the_reason(places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    etc, _ = places
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (etc / "token").mkdir()  # a directory: unreadable for root too
    with pytest.raises(SecretError, match="Is a directory"):
        read_secret("http.token_file", etc / "token")


def test_inline_value_wins_then_the_file_then_nothing(places: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    etc, _ = places
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (etc / "t").write_text("from-file\n")
    assert resolve_secret("x.token_file", SecretStr("inline"), None) == "inline"
    assert resolve_secret("x.token_file", None, etc / "t") == "from-file"
    assert resolve_secret("x.token_file", None, None) is None


def test_http_token_and_token_file_together_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token or token_file, not both"):
        load_settings(write_config(tmp_path / "edged.toml", daemon_config(
            tmp_path / "state", http={"token": "a", "token_file": "http-token"})))


def test_check_config_reports_a_missing_http_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state",
                                                                 http={"token_file": "http-token"}))
    assert main(["check-config", "--config", str(config)]) == 78
    err = capsys.readouterr().err
    assert "config error: http.token_file: " in err
    assert f"{tmp_path / 'http-token'}: no such file" in err
    (tmp_path / "http-token").write_text("s3cret\n")
    assert main(["check-config", "--config", str(config)]) == 0
    assert "config ok" in capsys.readouterr().out


def test_check_config_reads_each_secret_of_an_enabled_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = write_config(tmp_path / "edged.toml", daemon_config(
        tmp_path / "state", mqtt={"enabled": True, "username": "u", "password_file": "/nowhere/mqtt-password"},
        dapr={"enabled": True, "token_file": "/nowhere/dapr-token"}))
    assert main(["check-config", "--config", str(config)]) == 78
    err = capsys.readouterr().err
    assert "mqtt.password_file" not in err  # found in $CREDENTIALS_DIRECTORY
    assert "config error: dapr.token_file: $CREDENTIALS_DIRECTORY/dapr-token" in err
    assert "/nowhere/dapr-token: no such file" in err


async def test_http_api_takes_the_bearer_token_from_the_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http-token").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = Settings(state_dir=tmp_path / "state", http={"port": 0, "token_file": str(tmp_path / "http-token")},
                        mqtt={"enabled": False}, dapr={"enabled": False})
    async with App(settings) as app, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{app.http_port}"
        async with session.get(f"{base}/v1/functions") as resp:
            assert resp.status == 401
        async with session.get(f"{base}/v1/functions", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with session.get(f"{base}/v1/functions",
                               headers={"Authorization": "Bearer from-credentials"}) as resp:
            assert resp.status == 200
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 200
