"""The classify benchmark's "native-http" baseline: the same model behind a plain aiohttp server, no edged.

What a Python service written without edged would do per POST: Pillow decode + convert("RGB") + resize
to 224x224 (bilinear), interpreter invoke on a thread (one interpreter per thread, ``threads = 1``), top-5
JSON back. No sandbox and no durable store: the difference to edged's "http" mode is what edged adds
(the Wasm call and the durable commit), the difference to in-process "native" is the HTTP round trip.

    .venv/bin/python bench/native_server.py WORKERS     (prints "listening on http://HOST:PORT")
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image

from edged.inference.tflite import load_backend
from edged.malloc import pin_mmap_threshold

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "functions" / "classify" / "model"


class NativeClassifier:
    def __init__(self) -> None:
        self._backend = load_backend("auto")
        self._content = (MODEL_DIR / "efficientnet_lite0.tflite").read_bytes()
        self._labels = (MODEL_DIR / "labels.txt").read_text().splitlines()
        self._local = threading.local()

    def _interpreter(self) -> Any:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = self._backend.factory(model_content=self._content, num_threads=1)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
        return interpreter

    def classify(self, data: bytes) -> bytes:
        with Image.open(io.BytesIO(data)) as img:
            return self.classify_image(img)

    def classify_image(self, img: Image.Image) -> bytes:
        """From a decoded picture (bench/mqtt_pipeline_bench.py decodes once for two functions)."""
        rgb = img.convert("RGB").resize((224, 224), Image.BILINEAR)
        interpreter = self._interpreter()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(rgb, np.float32)[None])
        interpreter.invoke()
        scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        top = np.argsort(-scores)[:5]
        return json.dumps({"label": self._labels[top[0]], "confidence": float(scores[top[0]]),
                           "top": [{"label": self._labels[i], "score": float(scores[i])} for i in top],
                           "model": "efficientnet_lite0"}).encode()


async def serve(workers: int) -> None:
    classifier = NativeClassifier()
    executor = ThreadPoolExecutor(workers, thread_name_prefix="native")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        result = await asyncio.get_running_loop().run_in_executor(executor, classifier.classify, body)
        return web.Response(body=result, content_type="application/json")

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/v1/functions/classify", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        executor.shutdown()


if __name__ == "__main__":
    pin_mmap_threshold()  # as `edged run` does, so the two servers allocate alike
    asyncio.run(serve(int(sys.argv[1])))
