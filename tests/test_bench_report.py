"""bench/REPORT.md's renderer, from a small fake result set: tables, the targets rows, the plot files.

Behaviour only: no benchmark runs here and nothing is timed. The fake results have the shapes the benches
produce (pool_bench's, classify_bench's, start_bench's and mqtt_pipeline_bench's JSON; every bench's
printed tables, which the report carries and outbox_bench's target is read from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.render import SECTIONS, render
from bench.targets import TARGETS, cell, tables

POOL_STDOUT = """wasmtime-py ?, 2 CPUs, linux x86_64

## Per-call overhead beyond the function's own work (no-op modules, ms)

| variant                                              |       p50 |       p99 |
|------------------------------------------------------|-----------|-----------|
| edged frame-v1 no-op, whole call                     |     0.200 |     0.500 |
| edged frame-v1 no-op, in the sandbox                 |     0.070 |     0.300 |
| process per request (wasmtime CLI), no-op            |     9.000 |    21.000 |
"""

#: pool_bench.py latency --json: the no-op table and the soak's checkpoints
POOL_JSON = {"noop": {"whole_call_p50_ms": 0.2, "in_sandbox_p50_ms": 0.07, "command_whole_call_p50_ms": 0.3,
                      "command_in_sandbox_p50_ms": 0.1, "process_per_request_p50_ms": 9.0},
             "rss_mb_by_calls": [[0, 93.4], [5000, 93.2], [10000, 93.3]]}

GRAY_HTTP_STDOUT = """
## HTTP grayscale throughput (200 requests, 16 concurrent, 640x480 JPEG)

| handler | requests/s | p50 ms | p99 ms |
|---|---|---|---|
| native Pillow | 100 | 27.0 | 38.1 |
| edged grayscale (Wasm) | 80 | 41.3 | 50.1 |
"""

GRAY_HTTP_JSON = {"http_grayscale_native": {"requests_per_s": 100.0, "p50_ms": 27.0, "p99_ms": 38.1},
                  "http_grayscale_edged": {"requests_per_s": 80.0, "p50_ms": 41.3, "p99_ms": 50.1},
                  "http_grayscale_edged_over_native": 0.8}

DECODE_STDOUT = """
## Host decode, full size vs drafted for max_frame = [224, 224] (ms, one at a time)

| JPEG | decoded to | full p50 | full p99 | drafted p50 | drafted p99 | full / drafted |
|---|---|---|---|---|---|---|
| 640x480 | 320x240 (1/2) | 1.800 | 2.500 | 0.600 | 0.900 | 3.00x |
| 1920x1080 | 240x135 (1/8) | 15.000 | 19.000 | 1.500 | 2.000 | 10.00x |
"""

# One at a time is slower than the target, 8 cameras at once meets it: the target reads the latter.
OUTBOX_STDOUT = """
outbox benchmark: 1,000 results from 8 cameras, SQLite synchronous=FULL, load average 0.20

  write cost, one at a time, mean (µs/result)                 1,473
  write cost, one at a time, p50 / p99 (µs)           1,400 / 2,900
  write cost, 8 cameras at once, amortised (µs/result)           87
  CPU time, 8 cameras at once, all threads (µs/result)           60
  disk bytes per result (db+wal, checkpointed)                  420
"""

IMAGES_STDOUT = """## What a stored image costs (load average 0.20, 2 CPUs)

| image body | one at a time, p50 ms | one at a time, mean ms | 8 cameras at once, ms/result | disk bytes/result |
|---|---|---|---|---|
| kept | 2.408 | 4.752 | 0.693 | 84,787 |
| not stored | 1.851 | 3.851 | 0.145 | 973 |
"""


def classify_json() -> dict[str, Any]:
    out: dict[str, Any] = {"invoke_cli_process_ms": [900.0], "samples_ms": {}}
    for workers, scale in ((1, 1.0), (2, 1.8)):
        for mode, p50 in (("native", 10.0), ("invoke", 10.4), ("http", 12.0), ("native-http", 11.0)):
            out[f"{mode}/{workers}"] = {"p50_ms": p50, "p99_ms": p50 * 2, "images_per_s": scale * 1000 / p50}
            out["samples_ms"][f"{mode}/{workers}"] = [p50 * (0.9 + i / 100) for i in range(20)]
    return out


def fake_results(*, with_mqtt: bool = True) -> dict[str, Any]:
    benches: dict[str, Any] = {
        "pool": {"command": "python bench/pool_bench.py latency", "stdout": POOL_STDOUT, "json": POOL_JSON,
                 "seconds": 60, "load": "1.0"},
        "decode": {"command": "python bench/pool_bench.py decode", "stdout": DECODE_STDOUT, "json": {},
                   "seconds": 5},
        "gray_http": {"command": "python bench/pool_bench.py http", "stdout": GRAY_HTTP_STDOUT,
                      "json": GRAY_HTTP_JSON, "seconds": 20},
        "images": {"command": "python bench/images_bench.py", "stdout": IMAGES_STDOUT, "seconds": 4},
        "classify": {"command": "python bench/classify_bench.py", "stdout": "| mode |\n|---|\n| native |\n",
                     "json": classify_json(), "seconds": 30},
        "outbox": {"command": "python bench/outbox_bench.py", "stdout": OUTBOX_STDOUT, "seconds": 5},
        "start": {"command": "python bench/start_bench.py", "stdout": "", "seconds": 9,
                  "json": {"cold_s": [4.0], "warm_s": [0.9, 1.1, 0.95], "idle_rss_mb": [120.0, 140.0, 125.0]}},
    }
    if with_mqtt:
        latencies = {p: [100.0 + i for i in range(30)] for p in ("edged", "native")}
        benches["mqtt_pipeline"] = {"command": "python bench/mqtt_pipeline_bench.py", "stdout": "", "seconds": 20,
                                    "json": {"ratio": 0.9, **{p: {"lost": 0, "fps": 9.0, "latencies_ms": v}
                                                              for p, v in latencies.items()}}}
    return {"machine": {"date": "2026-01-01 00:00:00 UTC", "commit": "abc123", "cpu": "Test CPU, 2 cores, x86_64",
                        "ram": "1.0 GiB", "kernel": "6.0", "python": "CPython 3.11.7 (/x)", "packages": "wasmtime 50"},
            "load_start": "0.10 0.20 0.30", "load_end": "0.40 0.50 0.60", "wall_s": 124.0, "benches": benches}


def targets_rows(text: str) -> dict[str, list[str]]:
    rows = tables(text)["Targets (issue 14)"]
    return {row["figure"]: [row["measured"], row["target"], row["met?"]] for row in rows}


def test_report_has_machine_targets_sections_and_plots(tmp_path: Path) -> None:
    report = render(fake_results(), tmp_path)
    text = report.read_text()
    assert report == tmp_path / "REPORT.md"
    machine = {row["machine"]: row[""] for row in tables(text)["edged benchmark report"]}
    assert machine["git commit"] == "abc123"
    assert machine["load average (1/5/15 min), start of run"] == "0.10 0.20 0.30"
    assert machine["load average (1/5/15 min), end of run"] == "0.40 0.50 0.60"
    rows = targets_rows(text)
    assert len(rows) == len(TARGETS) == 10
    by_start = {figure.split(",")[0]: values for figure, values in rows.items()}
    assert by_start["classify over HTTP"] == ["1.09×", "≤ 1.10×", "yes"]  # 12.0 / 11.0
    assert by_start["classify through `edged invoke`"] == ["1.04×", "≤ 1.05×", "yes"]
    assert by_start["grayscale HTTP throughput vs a native Pillow server (PNG at zlib level 1)"][0] == "0.80×"
    assert by_start["grayscale HTTP throughput vs a native Pillow server (PNG at zlib level 1)"][2] == "**no**"
    # 8 cameras at once (group commit), not the one-at-a-time mean beside it
    assert by_start["outbox write cost per result"] == ["87.00 µs", "≤ 100 µs amortised", "yes"]
    assert by_start["RSS"] == ["125 MB", "≤ 130 MB", "yes"]  # the median of three
    assert by_start["whole no-op call vs a process per request (wasmtime CLI)"][0] == "45.00×"
    assert by_start["fresh-instance cost in the worker (no-op"][2] == "yes"
    assert rows["start to `/readyz` 200, warm module cache, x86_64"] == ["0.95 s", "≤ 1.0 s", "yes"]
    # No emulated aarch64 figures in this run (no rootfs): a row with no measurement, not an exception.
    aarch64 = next(values for figure, values in rows.items() if "emulated aarch64" in figure)
    assert aarch64 == ["not measured", "≤ 1.0 s", "?"]
    assert by_start["MQTT frames/s"] == ["0.90×", "≥ 0.8×", "yes"]
    for name in ("latency", "scaling", "rss"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{name}.png)" in text
    for _key, title, _about in SECTIONS:
        assert f"## {title}" in text
    # A bench's own tables come through under its section, headings demoted.
    assert "#### HTTP grayscale throughput" in text
    assert "## Method and gaps" in text
    assert "| edged grayscale (Wasm) | 80 | 41.3 | 50.1 |" in text
    # The decode and stored-image tables each come through in their own section.
    decode = text.index("## Host decode: full frame vs JPEG draft")
    assert decode < text.index("| 1920x1080 | 240x135 (1/8) | 15.000 |") < text.index("## grayscale over HTTP")
    images = text.index("## What keeping images costs, with and without group commit")
    assert images < text.index("| not stored | 1.851 | 3.851 | 0.145 | 973 |") < text.index("## Cold and warm start")
    assert "_Measured on Test CPU, 2 cores, x86_64, 1.0 GiB RAM, kernel 6.0, CPython 3.11.7, wasmtime 50;" in text


def test_missing_benches_are_reported_not_raised(tmp_path: Path) -> None:
    results = fake_results(with_mqtt=False)
    del results["benches"]["pool"]
    del results["benches"]["gray_http"]
    results["benches"]["outbox"]["error"] = "exit status 1: boom"
    text = render(results, tmp_path).read_text()
    rows = targets_rows(text)
    assert rows["MQTT frames/s, both functions, vs a native paho + Pillow + TFLite pipeline, zero loss"] == [
        "not measured", "≥ 0.8×", "?"]
    # 3 from pool_bench, MQTT, and start under emulated aarch64 (no rootfs in the fake run)
    assert sum(1 for values in rows.values() if values[0] == "not measured") == 5
    assert "**Failed:** exit status 1: boom" in text
    assert not (tmp_path / "plots" / "rss.png").exists()
    assert (tmp_path / "plots" / "scaling.png").exists()


def test_cell_reads_a_printed_table() -> None:
    results = {"pool": {"stdout": POOL_STDOUT}}
    assert cell(results, "pool", "Per-call overhead", "process per request", "p99") == 21
    results = {"decode": {"stdout": DECODE_STDOUT}}
    assert cell(results, "decode", "Host decode", "1920x1080", "full p50") == 15


def test_outbox_target_needs_the_every_camera_figure(tmp_path: Path) -> None:
    """An outbox run that printed only the one-at-a-time cost leaves the target unmeasured, not met by it."""
    results = fake_results()
    one_at_a_time = [line for line in OUTBOX_STDOUT.splitlines() if "at once" not in line]
    results["benches"]["outbox"]["stdout"] = "\n".join(one_at_a_time)
    text = render(results, tmp_path).read_text()
    rows = {figure.split(",")[0]: values for figure, values in targets_rows(text).items()}
    assert rows["outbox write cost per result"] == ["not measured", "≤ 100 µs amortised", "?"]
    assert rows["RSS"][0] == "125 MB"


def test_emulated_aarch64_start_is_read_from_the_start_bench(tmp_path: Path) -> None:
    results = fake_results()
    results["benches"]["start"]["json"]["aarch64"] = {"cold_s": [9.0], "warm_s": [3.5, 3.0, 4.0]}
    rows = targets_rows(render(results, tmp_path).read_text())
    aarch64 = next(values for figure, values in rows.items() if "emulated aarch64" in figure)
    assert aarch64 == ["3.50 s", "≤ 1.0 s", "**no**"]
    # Skipped (no rootfs, not root): its reason is in the start section, the row has no measurement.
    results["benches"]["start"]["json"]["aarch64"] = {"skipped": "not measured: no arm64 rootfs"}
    rows = targets_rows(render(results, tmp_path).read_text())
    assert next(values for figure, values in rows.items() if "emulated aarch64" in figure)[0] == "not measured"
