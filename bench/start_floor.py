"""The start floor: what serving needs, with nothing of edged (start_bench starts it beside the daemon).

Imports only the libraries the daemon cannot serve without: aiohttp's server (without parsing the CA
bundle, as edged.cadir imports it), wasmtime, sqlite3, and the TFLite runtime with numpy. Then it opens a
SQLite file in WAL mode, deserialises every module the daemon's warm start left in ``STATE_DIR/cache`` on
an engine with the daemon's code-generation settings, validates the model as the daemon does before it
is ready (one interpreter built and allocated, one more built), and answers ``GET /readyz`` with 200.
It logs ``listening on http://HOST:PORT`` as the daemon does, so start_bench times it from spawn to the
first 200 the same way. ``--only-imports`` exits right after the imports.

    python bench/start_floor.py STATE_DIR MODEL [--only-imports]
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

# As edged.cadir does for the daemon: aiohttp's import-time client TLS contexts parse no CA bundle.
os.environ.setdefault("SSL_CERT_FILE", os.devnull)

import wasmtime  # noqa: E402
from aiohttp import web  # noqa: E402

try:
    from ai_edge_litert.interpreter import Interpreter  # noqa: E402
except ImportError:  # the other runtime edged accepts
    from tflite_runtime.interpreter import Interpreter  # noqa: E402


async def _ready(_: web.Request) -> web.Response:
    return web.json_response({"ready": True})


def _load(state: Path, model_path: Path) -> tuple[object, ...]:
    """The store file, the engine, the cached modules and the model: what the daemon holds when ready."""
    db = sqlite3.connect(state / "floor.db")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    db.commit()
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    engine = wasmtime.Engine(config)
    modules = [wasmtime.Module.deserialize_file(engine, str(p)) for p in sorted((state / "cache").glob("*.cwasm"))]
    if not modules:
        raise SystemExit(f"no cached modules in {state / 'cache'}: start the daemon there once first")
    content = model_path.read_bytes()
    probe = Interpreter(model_content=content, num_threads=1)
    probe.allocate_tensors()
    del probe
    return db, engine, modules, Interpreter(model_content=content, num_threads=1)


async def _serve(held: tuple[object, ...]) -> None:
    app = web.Application()
    app.router.add_get("/readyz", _ready)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    del held


def main() -> None:
    if "--only-imports" in sys.argv:
        os._exit(0)  # now: the interpreter's own teardown of numpy & co. is no part of a start
    asyncio.run(_serve(_load(Path(sys.argv[1]), Path(sys.argv[2]))))


if __name__ == "__main__":
    main()
