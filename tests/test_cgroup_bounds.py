"""The daemon under the shipped unit's memory limit (MemoryMax=512M, as a real cgroup): pixel bombs, huge
results and scan bombs are answered, and nothing is OOM-killed (issue 11). Skipped where no memory cgroup
can be made. Peak memory per case is printed (run with -s to see it)."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edged.frames import FRAME_MAGIC
from tests.assets import GRAYSCALE_WASM as GRAYSCALE
from tests.cgroup import MemoryCgroup, memory_cgroup
from tests.configs import daemon_config, write_config
from tests.daemon import Daemon, run_daemon
from tests.images import encode, picture, scan_bomb
from tests.wat import Wat, write_wasm

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
UNIT_MEMORY_MAX = 512 * MiB
HEAP = 65536
SIDE_40MP = 6324  # 39.99 MP: under the default max_pixels (40,000,000)


def m_ok() -> str:
    w = Wat()
    return w.frame_module(f"{w.json(ok='(i32.const 1)')} (drop (call $emit)) (i32.const 0)")


def m_huge_frame_result(width: int, height: int, channels: int) -> str:
    size = 32 + width * height * channels
    header = "".join(f"(i32.store offset={off} (i32.const {HEAP}) (i32.const {value}))" for off, value in
                     ((0, FRAME_MAGIC), (4, 1), (8, width), (12, height), (16, channels), (24, size - 32)))
    # Touch every page, as a guest that really drew the frame would.
    return Wat().frame_module(f"""
    (drop (memory.grow (i32.const {size // 65536 + 2})))
    (memory.fill (i32.const {HEAP}) (i32.const 7) (i32.const {size}))
    {header}
    (call $output (i32.const {HEAP}) (i32.const {size}) (i32.const 3))""")


def post(daemon: Daemon, function: str, body: bytes, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{daemon.url}/v1/functions/{function}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (loopback)
            payload = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, {"bytes": len(payload)}


def post_all(daemon: Daemon, requests: list[tuple[str, bytes]]) -> list[tuple[int, dict[str, Any], float]]:
    """Send every request at once; return (status, body, seconds) for each, in order."""
    results: list[tuple[int, dict[str, Any], float] | None] = [None] * len(requests)

    def send(i: int, function: str, body: bytes) -> None:
        started = time.monotonic()
        status, payload = post(daemon, function, body)
        results[i] = (status, payload, time.monotonic() - started)

    threads = [threading.Thread(target=send, args=(i, *req), name=f"client-{i}") for i, req in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert all(r is not None for r in results), "a request got no answer"
    return [r for r in results if r is not None]


def healthy(daemon: Daemon, cg: MemoryCgroup, case: str) -> None:
    """The daemon still answers, was never OOM-killed; print the case's peak memory."""
    with urllib.request.urlopen(daemon.url + "/healthz", timeout=10) as resp:  # noqa: S310 (loopback)
        assert resp.status == 200
    assert daemon.proc.poll() is None
    assert cg.oom_kills() == 0
    peak = cg.max_usage()
    print(f"\n[{case}] peak memory of the cgroup: {peak / MiB if peak else float('nan'):.0f} MiB")  # noqa: T201


def config(tmp_path: Path, functions: dict[str, dict[str, Any]], workers: int = 4) -> Path:
    path = tmp_path / "edged.toml"
    write_config(path, daemon_config(tmp_path / "state", pool={"workers": workers, "queue": 8},
                                     functions=functions))
    return path


def test_four_40mp_pngs_at_once_are_answered_without_an_oom_kill(tmp_path: Path) -> None:
    probe = write_wasm(tmp_path, "probe", m_ok())
    # 128 MiB holds a 40 MP frame (114 MiB of RGB) in the guest: the worst case a function can ask for.
    cfg = config(tmp_path, {"probe": {"module": probe, "memory_mb": 128, "timeout_ms": 30_000}})
    size = (SIDE_40MP, SIDE_40MP)
    rgb = [encode(Image.new("RGB", size, colour), "PNG") for colour in ((200, 10, 10), (10, 200, 10), (9, 9, 9))]
    rgba = encode(Image.new("RGBA", size, (1, 2, 3, 4)), "PNG")
    assert all(len(png) < 400_000 for png in (*rgb, rgba))
    with memory_cgroup(UNIT_MEMORY_MAX) as cg, run_daemon(cfg, prefix=cg.prefix) as daemon:
        answers = post_all(daemon, [("probe", png) for png in (*rgb, rgba)])
        for status, body, _seconds in answers:
            assert status in (200, 422, 503), body
        statuses = [status for status, _body, _seconds in answers]
        assert 200 in statuses
        # RGBA decodes through a second 4-byte image: ~470 MiB, more than the budget (336 MiB) ever holds.
        assert answers[3][:2] == (422, {"error": "too_many_pixels", "detail": answers[3][1]["detail"]})
        healthy(daemon, cg, f"four 40 MP PNGs at once: {statuses}")
        # Those refused for now get through one at a time.
        for png in rgb:
            assert post(daemon, "probe", png)[0] == 200
        healthy(daemon, cg, "then the three RGB ones, one after the other")


def test_a_huge_frame_result_is_refused_cleanly(tmp_path: Path) -> None:
    huge = write_wasm(tmp_path, "huge", m_huge_frame_result(8000, 8000, 4))
    cfg = config(tmp_path, {
        # 400 MiB of guest memory can never fit the budget of a 512 MiB unit (336 MiB): refused unrun.
        "huge400": {"module": huge, "memory_mb": 400, "max_output_bytes": 300 * MiB},
        # 300 MiB fits: the guest really fills 256 MB; the result's 64 MP are over the pixel bound.
        "huge300": {"module": huge, "memory_mb": 300, "max_output_bytes": 300 * MiB},
    }, workers=2)
    small = encode(picture(8, 8), "PNG")
    with memory_cgroup(UNIT_MEMORY_MAX) as cg, run_daemon(cfg, prefix=cg.prefix) as daemon:
        status, body = post(daemon, "huge400", small)
        assert (status, body["error"]) == (500, "memory_limit"), body
        assert "memory budget" in body["detail"]
        status, body = post(daemon, "huge300", small)
        assert (status, body["error"]) == (500, "bad_output"), body
        assert "pixels; the limit is 40000000" in body["detail"]
        healthy(daemon, cg, "8000x8000 RGBA results")


def test_a_scan_bomb_is_answered_in_time_while_a_valid_image_beside_it_gets_200(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"grayscale": {"module": GRAYSCALE, "timeout_ms": 1000, "memory_mb": 32}}, workers=2)
    bomb = scan_bomb(20_000)  # ~200 KB; Pillow alone would spend ~9 s on its scans
    valid = encode(picture(640, 480), "JPEG")
    with memory_cgroup(UNIT_MEMORY_MAX) as cg, run_daemon(cfg, prefix=cg.prefix) as daemon:
        (bomb_status, bomb_body, bomb_seconds), (status, _body, _s) = post_all(
            daemon, [("grayscale", bomb), ("grayscale", valid)])
        assert bomb_status in (422, 504), bomb_body
        assert bomb_seconds < 1.0 + 2.0, bomb_seconds
        assert status == 200
        print(f"\nscan bomb of {len(bomb)} bytes answered {bomb_status} in {bomb_seconds:.3f} s")  # noqa: T201
        healthy(daemon, cg, "a scan bomb beside a valid JPEG")


def open_files(pid: int) -> list[Path]:
    """What the process has open; an fd closed between the listing and its readlink is skipped."""
    opened = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            opened.append(Path(os.readlink(fd)))
        except FileNotFoundError:  # the daemon closed it meanwhile (a connection, a finished read)
            continue
    return opened


def test_stdout_and_stderr_floods_fail_alone(tmp_path: Path) -> None:
    """Guests writing 1 MiB per fd_write to stdout (forever) and stderr (300 MiB): the first fails with
    bad_output, the second is cut at 64 KiB and succeeds, a call beside them gets 200, nothing is
    OOM-killed, and nothing they wrote is left on the tmpfs."""
    from tests.test_host_bounds import m_stderr_flood, m_stdout_flood

    cfg = config(tmp_path, {
        "outflood": {"module": write_wasm(tmp_path, "outflood", m_stdout_flood()), "abi": "wasi-command",
                     "input": "raw", "memory_mb": 8, "max_output_bytes": 4 * MiB, "timeout_ms": 3000},
        "errflood": {"module": write_wasm(tmp_path, "errflood", m_stderr_flood(300)), "memory_mb": 8,
                     "timeout_ms": 30_000},
        "ok": {"module": write_wasm(tmp_path, "ok", m_ok()), "memory_mb": 8},
    }, workers=3)
    small = encode(picture(8, 8), "PNG")
    with memory_cgroup(UNIT_MEMORY_MAX) as cg, run_daemon(cfg, prefix=cg.prefix) as daemon:
        (out_status, out_body, _), (err_status, err_body, _), (ok_status, _, _) = post_all(
            daemon, [("outflood", small), ("errflood", small), ("ok", small)])
        assert (out_status, out_body.get("error")) == (500, "bad_output"), out_body
        assert err_status == 200, err_body
        assert ok_status == 200
        # The daemon's own scratch root: the directory its open stdio files live in.
        opened = open_files(daemon.proc.pid)
        roots = {p.parents[1] for p in opened if p.name in ("stdout", "stderr") and "edged-wasm-" in str(p)}
        assert roots, opened
        left = sum(f.stat().st_blocks * 512 for root in roots for f in root.glob("worker-*/*") if f.is_file())
        assert left < 16 * MiB, f"{left} bytes of guest output left on the tmpfs"
        healthy(daemon, cg, "stdout and stderr floods beside a normal call")
