"""bench/REPORT.md from the results bench/report.py collected: header, targets, plots, one section per bench.

Pure: the results (a JSON-able dict, see report.py) in, markdown and PNG files out, so a small fake result
set renders the whole report in a test. A bench's own tables go into its section as printed (headings
demoted under the section's), so the report and a bench run alone say the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.plots import render_plots
from bench.targets import Results, evaluate

__all__ = ["SECTIONS", "render", "render_output"]

#: (results key, section title, what it compares), in report order
SECTIONS = (
    ("pool", "Function pool: edged vs a process per request (wasmtime CLI) and vs native Pillow; "
     "RSS over a 10,000-call soak",
     "Fresh instance per call against a reused instance, one `wasmtime` process per request and native "
     "Pillow; no-op modules for the per-call overhead; RSS across the soak (`make bench-quick`: the no-op "
     "table only)."),
    ("decode", "Host decode: full frame vs JPEG draft (640×480 and 1920×1080)",
     "`edged.frames.decode` of a camera JPEG at full size, and drafted for classify's `max_frame = [224, 224]` "
     "(DCT scaling), interleaved."),
    ("gray_http", "grayscale over HTTP: edged vs a native Pillow route in the same server",
     "Throughput and latency, 16 concurrent clients in another process, 640×480 JPEG."),
    ("classify", "classify: edged vs native TFLite, vs the native HTTP server (bench/native_server.py); "
     "HTTP and invoke; scaling with workers",
     "p50/p99 and images/s per mode and worker count; the ratios the targets use are at 1 worker."),
    ("mqtt_pipeline", "MQTT: edged vs a native pipeline (paho + Pillow + TFLite in one process)",
     "Both functions on every frame, same broker, same frames, QoS 1 with manual acks; every frame's two "
     "results are accounted for. Then the CPU of each process per frame done, thread by thread (read from /proc "
     "around the same bursts), and edged's store writer jobs and transactions per frame."),
    ("mqtt_rates", "MQTT ingest at increasing rates (bench/mqtt_bench.py)",
     "Four cameras at increasing offered rates, then a saturation burst; latency is publish to both results."),
    ("outbox", "Outbox: write cost and drain",
     "Durable commits of classify results one at a time and from 8 cameras at once (group commit), CPU time "
     "and disk bytes per result, drain to the sidecar emulator (`make bench-quick`: the writes only)."),
    ("images", "What keeping images costs, with and without group commit",
     "grayscale results committed with their PNG body (a reader such as `[history] images` is configured) "
     "and without it, one at a time and from 8 cameras at once; disk bytes per result; commit time while "
     "the history is read (`make bench-quick`: not the reads)."),
    ("start", "Cold and warm start",
     "Process start to the first `/readyz` 200 with an empty and a filled module cache; idle RSS."),
)


NOTES = (
    "Benches run one after the other, each in its own processes; within a bench, edged and its baseline run "
    "side by side (interleaved rounds where the bench does that), so the ratios hold up better than the "
    "absolute figures on a busy machine.",
    "Targets read figures from the benches' `--json` (pool_bench, classify_bench, start_bench, "
    "mqtt_pipeline_bench) or, for outbox_bench, its printed lines: a figure a bench no longer writes shows "
    "as \"not measured\".",
    "The no-op ratio is the whole call (awaited through the pool, thread hand-off included); pool_bench also "
    "prints the ratio for the sandbox cost alone, and the floors beside it: bare wasmtime doing the same call "
    "and the bare loop -> thread -> loop round trip, timed in the same interleaved rounds.",
    "The outbox write cost is outbox_bench's 8 cameras at once: the whole fill's wall time over the results "
    "(concurrent commits share a transaction and its fsync); the one-at-a-time cost is beside it.",
    "Start to `/readyz` under emulated aarch64 runs only where `make cross-test` left its arm64 rootfs and the "
    "report runs as root (bench/start_aarch64.py); it is qemu-user emulation, not a board: the start section "
    "puts a bare `python -c pass` and `import aiohttp` under qemu beside native for scale.",
    "Raw figures of the run (every latency sample) are in build/bench-results.json; "
    "`python bench/report.py --render FILE` re-renders a report from such a file.",
)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_output(stdout: str) -> list[str]:
    """A bench's printed output as report markdown: headings demoted, tables kept, other lines kept as lines."""
    out: list[str] = []
    in_table = False
    for raw in stdout.splitlines():
        line = raw.strip()
        if not line:
            in_table = False
            out.append("")
        elif line.startswith("#"):
            in_table = False
            out += ["", "#### " + line.lstrip("#").strip(), ""]
        elif line.startswith("|"):
            if not in_table and out and out[-1]:
                out.append("")
            in_table = True
            out.append(line)
        else:
            if in_table:
                out.append("")
            in_table = False
            out.append(line + "  ")  # a markdown line break: the benches print one figure per line
    return out


def _stamp(results: dict[str, Any], bench: dict[str, Any]) -> str:
    m = results["machine"]
    wasmtime = re.search(r"wasmtime [\d.]+", m.get("packages", ""))
    return (f"_Measured on {m['cpu']}, {m['ram']} RAM, kernel {m['kernel']}, {m['python'].split(' (')[0]}, "
            f"{wasmtime.group() if wasmtime else 'wasmtime ?'}; "
            f"{m['date']}; commit {m['commit']}; load average at the start of this bench "
            f"{bench.get('load', '?')}; took {bench.get('seconds', 0):.0f} s._")


def render(results: dict[str, Any], directory: Path, *, plots_dir: str = "plots") -> Path:
    """Write ``directory``/REPORT.md and its plots under ``directory``/``plots_dir``; return the report's path."""
    m = results["machine"]
    benches: Results = results.get("benches", {})
    plots = render_plots(benches, directory / plots_dir)
    command = results.get("command", "python bench/report.py")
    kinds = {"quick": "quick: a subset, short runs", "light": "light: every bench, fewer iterations, for a loaded "
             "machine; `make bench` on a quiet one gives the figures to quote"}
    kind = kinds.get(results.get("preset", ""), "full run")
    lines = ["# edged benchmark report", "",
             f"Written by `{command}` ({kind}). "
             "Every figure below comes from this one run; ratios compare edged and its baseline measured side by "
             "side in it. Timing figures from a loaded machine are noisy: read the load average first.", ""]
    lines += _table(("machine", ""), [
        ("date", m["date"]), ("git commit", m["commit"]), ("CPU", m["cpu"]), ("RAM", m["ram"]),
        ("kernel", m["kernel"]), ("Python", m["python"]), ("packages", m["packages"]),
        ("load average (1/5/15 min), start of run", results.get("load_start", "?")),
        ("load average (1/5/15 min), end of run", results.get("load_end", "?")),
        ("wall time of the run", f"{results.get('wall_s', 0):.0f} s"),
    ])
    lines += ["", "## Targets (issue 14)", "",
              f"_{m['cpu']}; {m['date']}; commit {m['commit']}; load {results.get('load_start', '?')} → "
              f"{results.get('load_end', '?')}._", ""]
    lines += _table(("figure", "measured", "target", "met?"), evaluate(benches))
    lines += ["", "## Plots", ""]
    captions = {"latency": "Latency distributions: classify over HTTP and in process, MQTT (edged vs native)",
                "scaling": "classify throughput against workers", "rss": "RSS over the grayscale soak"}
    for name, path in plots.items():
        lines += [f"![{captions[name]}]({plots_dir}/{path.name})", "", f"_{captions[name]}._", ""]
    if not plots:
        lines += ["(no plot: the figures they need were not measured in this run)", ""]
    for key, title, about in SECTIONS:
        bench = benches.get(key)
        lines += [f"## {title}", ""]
        if bench is None:
            lines += ["Not run in this report.", ""]
            continue
        lines += [_stamp(results, bench), "", about, "", f"Command: `{bench.get('command', '?')}`", ""]
        if bench.get("error"):
            lines += [f"**Failed:** {_cell(bench['error'])}", ""]
        lines += render_output(bench.get("stdout", ""))
        lines.append("")
    lines += ["## Method and gaps", ""] + [f"- {note}" for note in NOTES] + [""]
    report = directory / "REPORT.md"
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    report.write_text(text.rstrip() + "\n")
    return report
