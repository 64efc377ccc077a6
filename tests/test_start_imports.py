"""What starting the daemon imports and builds before it is ready (issue 14's start-up target).

Each check runs in a fresh interpreter (a real subprocess), since ``sys.modules`` in the test process is
whatever earlier tests imported. Starting is ``App(settings)`` entered: store, models, pool, HTTP listen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.cadir import hashed_ca_directory
from tests.assets import CLASSIFY_DIR as CLASSIFY
from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.assets import REPO
from tests.configs import daemon_config, write_config

#: Needed only on a path that uses them: a declared model, [deploy] enabled.
TFLITE_RUNTIMES = ("ai_edge_litert", "tflite_runtime")
DEPLOY_SERVICE = ("edged.deploy", "edged.deploy.service")
#: Needed only with [mqtt] enabled (the connections, the result publisher and Home Assistant discovery).
MQTT_ONLY = ("paho", "paho.mqtt.client", "edged.mqtt.connection", "edged.sync.mqtt_results",
             "edged.sync.homeassistant")

START = """
import asyncio, json, sys
from pathlib import Path
from edged.app import App
from edged.settings import load_settings

async def main():
    async with App(load_settings(Path(sys.argv[1]))) as app:
        assert app.http_port
        print(json.dumps(sorted(sys.modules)))

asyncio.run(main())
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _modules_after_start(tmp_path: Path, **tables: object) -> set[str]:
    cfg = write_config(tmp_path / "edged.toml", daemon_config(tmp_path / "state", **tables))
    return set(json.loads(_python(START, str(cfg))))


def test_start_without_models_imports_no_tflite_runtime_nor_deploy_service(tmp_path: Path) -> None:
    loaded = _modules_after_start(tmp_path, functions={"grayscale": {"module": GRAYSCALE}})
    assert "edged.app" in loaded  # the probe saw a started daemon
    assert loaded.isdisjoint(TFLITE_RUNTIMES + DEPLOY_SERVICE), sorted(loaded & {*TFLITE_RUNTIMES, *DEPLOY_SERVICE})


def test_start_with_mqtt_off_imports_no_paho(tmp_path: Path) -> None:
    loaded = _modules_after_start(tmp_path, functions={"grayscale": {"module": GRAYSCALE}}, mqtt={"enabled": False})
    assert "edged.app" in loaded
    assert loaded.isdisjoint(MQTT_ONLY), sorted(loaded & set(MQTT_ONLY))


def test_start_with_mqtt_on_imports_paho(tmp_path: Path) -> None:
    # Nothing listens on port 1: the connection retries in the background, the start itself completes.
    loaded = _modules_after_start(tmp_path, functions={"grayscale": {"module": GRAYSCALE}},
                                  mqtt={"enabled": True, "host": "127.0.0.1", "port": 1})
    assert set(MQTT_ONLY) <= loaded


def test_a_declared_model_is_validated_by_the_runtime_before_ready(tmp_path: Path) -> None:
    # Not preloaded, yet checked at start with its runtime (a bad model stops start): the runtime is imported.
    loaded = _modules_after_start(
        tmp_path, functions={"classify": {"module": CLASSIFY / "classify.wasm", "memory_mb": 256,
                                          "models": ["efficientnet_lite0"]}},
        models={"efficientnet_lite0": {"path": CLASSIFY / "model" / "efficientnet_lite0.tflite", "preload": False}})
    assert not loaded.isdisjoint(TFLITE_RUNTIMES)


def test_enabled_deploy_imports_its_service(tmp_path: Path) -> None:
    loaded = _modules_after_start(tmp_path, functions={"grayscale": {"module": GRAYSCALE}}, deploy={"enabled": True})
    assert set(DEPLOY_SERVICE) <= loaded


# aiohttp's client contexts (a private name of aiohttp.connector): how many CA certificates they hold.
CA_COUNT = """
import json, os
import edged.app
from aiohttp import connector
print(json.dumps([connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509"], os.environ.get("SSL_CERT_FILE")]))
"""


def _without_ca_overrides() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}


@pytest.mark.skipif(hashed_ca_directory() is None, reason="no hashed CA directory on this machine")
def test_importing_the_app_parses_no_ca_bundle_and_restores_the_environment() -> None:
    proc = subprocess.run([sys.executable, "-c", CA_COUNT], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**_without_ca_overrides(), "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    certs, cert_file = json.loads(proc.stdout.strip().splitlines()[-1])
    assert certs == 0  # looked up in the directory on the first handshake instead
    assert cert_file is None


def test_an_operator_ca_bundle_is_left_alone(tmp_path: Path) -> None:
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).exists():
        pytest.skip("no system CA bundle")
    certs, cert_file = json.loads(_python(CA_COUNT, env={"SSL_CERT_FILE": bundle}))
    assert certs > 0
    assert cert_file == bundle
