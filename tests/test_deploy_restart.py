"""Deploy against the real daemon (python -m edged run): ``edged deploy`` and ``edged rollback`` through the
API, a reload (SIGHUP) that keeps the deployed functions, a config function that shadows one, and
everything still there after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.configs import daemon_config, write_config
from tests.daemon import REPO, Daemon, run_daemon
from tests.test_pool import m_ok
from tests.test_reload import GRAYSCALE, image
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

TOKEN = "deploy-s3cret"


def request(d: Daemon, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(d.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), exc.headers.get_content_type()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False)


def document(d: Daemon, name: str) -> dict[str, Any]:
    status, body, _ = request(d, "GET", f"/v1/functions/{name}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_deployed_functions_survive_reload_and_restart(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    v2 = tmp_path / "v2.wasm"
    v2.write_bytes(wasmtime.wat2wasm(m_ok()))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"memory_mb": 32, "timeout_ms": 3000}))
    functions = {"gray": {"module": GRAYSCALE, "memory_mb": 32}}
    cfg = daemon_config(tmp_path / "state", functions=functions, deploy={"enabled": True},
                        http={"token_file": token_file})
    path = write_config(tmp_path / "edged.toml", cfg)
    data = image()
    with run_daemon(path) as d:
        anonymous = urllib.request.Request(d.url + "/v1/modules/sha256:" + "0" * 64, data=b"x", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as refused_upload:
            urllib.request.urlopen(anonymous, timeout=30)
        assert refused_upload.value.code == 401
        refused_upload.value.close()
        # The CLI reads the token from the config's http.token_file; with port 0 the URL is given.
        done = cli(path, "deploy", "f", str(GRAYSCALE), "--spec", str(spec), "--url", d.url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["version"] == 1
        assert request(d, "POST", "/v1/functions/f", data)[::2] == (200, "image/png")
        done = cli(path, "deploy", "f", str(v2), "--spec", str(spec), "--url", d.url)
        assert (done.returncode, json.loads(done.stdout)["version"]) == (0, 2), done.stderr
        bad = cli(path, "deploy", "f", str(spec), "--url", d.url)  # a JSON file is no module
        assert bad.returncode == 1
        assert json.loads(bad.stderr)["error"] == "bad_module"
        assert len(bad.stderr.strip().splitlines()) == 1
        refused = cli(path, "deploy", "gray", str(GRAYSCALE), "--url", d.url)
        assert (refused.returncode, json.loads(refused.stderr)["error"]) == (1, "read_only")
        missing = cli(path, "deploy", "f", str(tmp_path / "nope.wasm"), "--url", d.url)
        assert (missing.returncode, json.loads(missing.stderr)["error"]) == (1, "unreadable_input")
        # A reload keeps the deployed function beside the config's new one; a config function of the same
        # name would win over it.
        write_config(path, {**cfg, "functions": {**functions, "gray2": functions["gray"]}})
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reloaded (functions:")
        assert json.loads(request(d, "POST", "/v1/functions/f", data)[1]) == {"ok": 1}
        assert request(d, "POST", "/v1/functions/gray2", data)[0] == 200
    with run_daemon(path) as d:
        doc = document(d, "f")
        assert (doc["version"], doc["origin"], [v["version"] for v in doc["versions"]]) == (2, "api", [1])
        assert json.loads(request(d, "POST", "/v1/functions/f", data)[1]) == {"ok": 1}
        done = cli(path, "rollback", "f", "--url", d.url)
        assert (done.returncode, json.loads(done.stdout)["version"]) == (0, 1), done.stderr
        assert request(d, "POST", "/v1/functions/f", data)[::2] == (200, "image/png")
        # The config now defines f itself: it wins, with one line saying so, and the API's f is read-only.
        write_config(path, {**cfg, "functions": {**functions, "f": {"module": v2, "memory_mb": 32}}})
    with run_daemon(path) as d:
        assert json.loads(request(d, "POST", "/v1/functions/f", data)[1]) == {"ok": 1}
        assert document(d, "f")["origin"] == "config"
        wait_until(lambda: "shadowed by the config file's functions" in d.log, 10, "the shadowing line")
        assert d.log.count("shadowed by the config file's functions") == 1
