"""The real daemon as `make run` starts it: the dev config with no broker and no sidecar, the CLI, and
systemd notify datagrams (READY, STATUS, WATCHDOG, STOPPING) on a real datagram socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.daemon import run_daemon
from tests.notify import NotifySocket
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
DEV_CONFIG = REPO / "config" / "edged.toml"
PHOTO = REPO / "tests" / "data" / "chelsea.jpg"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev_env(tmp_path: Path) -> dict[str, str]:
    return {
        "EDGED_HTTP__PORT": "0",
        "EDGED_STATE_DIR": str(tmp_path / "state"),
        "EDGED_MQTT__PORT": str(closed_port()),
        "EDGED_DAPR__URL": f"http://127.0.0.1:{closed_port()}",
    }


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_dev_config_serves_without_broker_or_sidecar(tmp_path: Path) -> None:
    with run_daemon(DEV_CONFIG, dev_env(tmp_path)) as d:
        status, health = get_json(d.url + "/healthz")
        assert (status, health) == (200, {"status": "ok"})
        ready: dict[str, Any] = {}

        def settled() -> bool:
            status, body = get_json(d.url + "/readyz")
            assert status == 200, body
            ready.update(body)
            return all(ready["components"].get(name, {}).get("state") not in (None, "starting")
                       for name in ("mqtt", "dapr"))

        wait_until(settled, 20, lambda: f"mqtt and dapr past 'starting': {ready}", interval=0.1)
        comps = ready["components"]
        assert comps["mqtt"]["state"] in ("disconnected", "error")
        assert comps["dapr"]["state"] in ("disconnected", "error")
        req = urllib.request.Request(d.url + "/v1/functions/grayscale", data=PHOTO.read_bytes(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.headers["Content-Type"] == "image/png"
            assert resp.read().startswith(b"\x89PNG")
        code = d.stop()
    assert code == 0
    assert "stopped" in d.log


def test_cli_invoke_and_functions(tmp_path: Path) -> None:
    env = {**os.environ, "EDGED_STATE_DIR": str(tmp_path / "state")}
    out_png = tmp_path / "gray.png"
    run = subprocess.run([sys.executable, "-m", "edged", "--config", str(DEV_CONFIG), "invoke", "grayscale",
                          str(PHOTO), "-o", str(out_png)], capture_output=True, text=True, timeout=120, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["content_type"] == "image/png"
    with Image.open(out_png) as out, Image.open(PHOTO) as src:
        assert out.tobytes() == src.convert("L").tobytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    run = subprocess.run([sys.executable, "-m", "edged", "--config", str(DEV_CONFIG), "invoke", "grayscale",
                          str(bad)], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert run.returncode == 1
    assert json.loads(run.stderr.strip().splitlines()[-1])["error"] == "bad_image"
    listing = subprocess.run([sys.executable, "-m", "edged", "functions", "--config", str(DEV_CONFIG)],
                             capture_output=True, text=True, timeout=120, env=env, check=False)
    assert listing.returncode == 0, listing.stderr
    names = {f["name"]: f for f in json.loads(listing.stdout)}
    assert names["grayscale"]["abi"] == "frame-v1"
    assert names["grayscale-cmd"]["abi"] == "wasi-command"


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    env = {**dev_env(tmp_path), "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    with NotifySocket(tmp_path / "notify.sock") as notify, run_daemon(DEV_CONFIG, env) as d:
        notify.wait_for("READY=1")
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert "STATUS=" in ready
        notify.wait_for("WATCHDOG=1")
        d.stop()
        notify.wait_for("STOPPING=1")
