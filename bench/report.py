"""Run every benchmark in one go and write bench/REPORT.md with PNG plots (``make bench``).

Each bench runs as its own process, exactly as it runs alone (its command line is in the report), one
after the other so they do not compete for the CPUs. Benches that write JSON get ``--json``; outbox_bench's
printed lines are read back (bench/targets.py). A bench that fails is reported as failed and the run goes
on. ``--quick`` (``make bench-quick``) runs a subset with short runs and writes to build/bench-quick/, never
over the committed report. ``--light`` runs every bench with fewer iterations into bench/, for a loaded
machine where the full run would take hours; the report says which it was.

    .venv/bin/python bench/report.py [--quick | --light] [--out DIR] [--only NAME,...] [--max-busy 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe, load_average  # noqa: E402
from bench.render import render  # noqa: E402

TIMEOUT = 3600.0


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]
    #: None: not run by --quick
    quick: tuple[str, ...] | None
    #: every bench, fewer iterations: for a loaded machine, where the full run would take hours
    light: tuple[str, ...]
    json: bool = False

    def args(self, preset: str) -> tuple[str, ...] | None:
        return {"full": self.full, "quick": self.quick, "light": self.light}[preset]


def worker_counts() -> str:
    """1, 2, 4, ... up to the CPU count (and the CPU count itself): the scaling curve's points."""
    cpus = max(2, os.cpu_count() or 1)
    counts = {cpus}
    n = 1
    while n < cpus:
        counts.add(n)
        n *= 2
    return ",".join(str(c) for c in sorted(counts))


def benches(max_busy: float) -> tuple[Bench, ...]:
    busy = ("--max-busy", str(max_busy))
    return (
        # --aarch64: also inside make cross-test's emulated arm64 rootfs, when it exists (bench/start_aarch64.py).
        Bench("start", "start_bench.py", ("--runs", "3", "--aarch64"), ("--runs", "1", "--settle", "1"),
              ("--runs", "2", "--aarch64"), json=True),
        # pool_bench, one mode per section; the quick run takes only the no-op overhead of its call tables.
        Bench("pool", "pool_bench.py", ("latency",), ("noop", "--quick"), ("latency", "--quick"), json=True),
        Bench("decode", "pool_bench.py", ("decode",), ("decode", "--quick"), ("decode", "--quick"), json=True),
        Bench("gray_http", "pool_bench.py", ("http",), ("http", "--quick"), ("http", "--quick"), json=True),
        Bench("classify", "classify_bench.py", ("--workers", worker_counts(), *busy),
              ("--quick", "--requests", "20", "--rounds", "1", "--warmup", "3"),
              ("--requests", "60", "--rounds", "2", "--warmup", "5", "--workers", worker_counts(), *busy),
              json=True),
        Bench("mqtt_pipeline", "mqtt_pipeline_bench.py", ("--frames", "200", "--rounds", "3"),
              ("--frames", "12", "--rounds", "1"), ("--frames", "40", "--rounds", "2"), json=True),
        Bench("mqtt_rates", "mqtt_bench.py", (), None, ("--quick", "--rates", "4,8,16")),
        Bench("outbox", "outbox_bench.py", (), ("--n", "400", "--write-only"), ("--n", "5000")),
        Bench("images", "images_bench.py", (), ("--n", "96", "--reads", "0"), ("--n", "150", "--reads", "150")),
    )


def run(bench: Bench, args: tuple[str, ...], scratch: Path) -> dict[str, Any]:
    """Run one bench; what it printed, its JSON if any, how long it took, and the error if it failed."""
    command = [sys.executable, str(ROOT / "bench" / bench.script), *args]
    json_path = scratch / f"{bench.name}.json"
    if bench.json:
        command += ["--json", str(json_path)]
    shown = " ".join(["python", f"bench/{bench.script}", *args])
    out: dict[str, Any] = {"command": shown, "load": load_average()}
    print(f"== {shown}  (load {out['load']})", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
        out["stdout"] = proc.stdout
        if proc.returncode != 0:
            out["error"] = f"exit status {proc.returncode}: {proc.stderr.strip()[-600:]}"
    except subprocess.TimeoutExpired as exc:
        out["stdout"] = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out["error"] = f"timed out after {TIMEOUT:.0f} s"
    out["seconds"] = time.perf_counter() - started
    if bench.json and json_path.exists():
        out["json"] = json.loads(json_path.read_text())
    print(out["stdout"], flush=True)
    if "error" in out:
        print(f"!! {bench.name} failed: {out['error']}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a subset with short runs (make bench-quick)")
    parser.add_argument("--light", action="store_true",
                        help="every bench with fewer iterations, into bench/ (a loaded machine; the report says so)")
    parser.add_argument("--out", type=Path, help="report directory (default: bench/, or build/bench-quick/)")
    parser.add_argument("--render", type=Path, help="only re-render the report from this results JSON")
    parser.add_argument("--only", default="", help="comma separated bench names to run")
    parser.add_argument("--max-busy", type=float, default=0.25,
                        help="classify_bench waits (up to 120 s a round) until other processes use less than this "
                             "share of the CPUs; 1 = never wait")
    args = parser.parse_args()
    out_dir: Path = args.out or (ROOT / "build" / "bench-quick" if args.quick else ROOT / "bench")
    if args.render:
        print(f"wrote {render(json.loads(args.render.read_text()), out_dir)}")
        return
    only = {n for n in args.only.split(",") if n}
    preset = "quick" if args.quick else "light" if args.light else "full"
    results: dict[str, Any] = {"machine": describe(), "load_start": load_average(), "preset": preset,
                               "command": " ".join(["python bench/report.py", *sys.argv[1:]]), "benches": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edged-bench-report-") as scratch:
        for bench in benches(args.max_busy):
            bench_args = bench.args(preset)
            if bench_args is None or (only and bench.name not in only):
                continue
            results["benches"][bench.name] = run(bench, bench_args, Path(scratch))
    results["wall_s"] = time.perf_counter() - started
    results["load_end"] = load_average()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every figure incl. raw latencies, for a closer look; kept out of git (build/ is ignored).
    raw = out_dir / "results.json" if args.quick else ROOT / "build" / "bench-results.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1))
    report = render(results, out_dir)
    print(f"\nwrote {report} in {results['wall_s']:.0f} s (load {results['load_start']} -> {results['load_end']})")
    if any("error" in b for b in results["benches"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
