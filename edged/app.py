"""The composition root: builds every long-lived part in dependency order and runs until stopped.

Startup order is store -> models -> pool -> MQTT -> HTTP; teardown is the reverse, through one
AsyncExitStack. Background loops (watchdog, cloud sync, MQTT) live in one TaskGroup and are named
``edged.<area>.<loop>``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from aiohttp import web

from edged.ingest.http import HttpApi
from edged.ingest.mqtt import MqttIngest
from edged.lifecycle import install_signal_handlers
from edged.metrics import Metrics
from edged.pipeline import Pipeline
from edged.settings import Settings
from edged.status import Components
from edged.store import Store
from edged.sync.cloudevents import CloudEvents
from edged.sync.dapr import COMPONENT as DAPR_COMPONENT
from edged.sync.dapr import DaprSync
from edged.sync.mqtt_results import ResultPublisher
from edged.systemd import Notifier
from edged.wasm.build import build_pool

__all__ = ["App", "run"]

log = logging.getLogger(__name__)

#: How long each shutdown stage may take before the next one goes ahead anyway.
HTTP_DRAIN_SECONDS = 5.0


class App:
    """One running daemon. ``async with App(settings) as app`` starts it; leaving the block stops it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.components = Components(self.metrics)
        self.notifier = Notifier()
        # Models are read once, when the stack enters the registry; the pool only borrows interpreters.
        self.models, self.pool = build_pool(settings, on_call=self.metrics.on_call)
        cloudevents = CloudEvents(settings.device_id, settings.sync)
        self.store = Store(settings.state_dir / "edged.db", settings.outbox, cloudevents.admit, self.metrics)
        self.sync: DaprSync | None = None
        if settings.dapr.enabled:
            self.sync = DaprSync(settings.dapr, settings.sync, self.store, self.components, self.metrics,
                                 cloudevents=cloudevents)
        else:
            self.components.set(DAPR_COMPONENT, "disabled")
        self.pipeline = Pipeline(settings, self.pool, self.store, self.metrics)
        self.results: ResultPublisher | None = None
        if settings.mqtt.enabled:
            self.results = ResultPublisher(settings.mqtt, settings.mqtt_client_id, self.store, self.metrics,
                                           self.components)
        self.mqtt = MqttIngest(settings, self.pipeline, self.results, self.metrics, self.components,
                               attempts=self.store)
        self.http = HttpApi(settings, self.pool, self.metrics, self.components, self.pipeline,
                            outbox=self.store, sync=self.sync.status if self.sync is not None else None)
        self.http_port: int | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> App:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            # The store first: everything after it may commit (and it must outlive the sync loop).
            await self._stack.enter_async_context(self.store)
            await self._stack.enter_async_context(self.models)
            await self._stack.enter_async_context(self.pool)
            if self.results is not None:
                await self._stack.enter_async_context(self.results)  # closed after ingest stops
            await self._stack.enter_async_context(self.mqtt)
            await self._stack.enter_async_context(self._serve_http())
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Intake stops here, whoever drives the app: new requests get 503 while the stack drains.
        self.http.accepting = False
        self.notifier.stopping()
        await self._stack.aclose()

    @asynccontextmanager
    async def _serve_http(self) -> AsyncIterator[None]:
        runner = web.AppRunner(self.http.application(), shutdown_timeout=HTTP_DRAIN_SECONDS,
                               access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.http.host, self.settings.http.port, reuse_address=True)
            await site.start()
            self.http_port = int(runner.addresses[0][1])
            log.info("listening on http://%s:%s", self.settings.http.host, self.http_port)
            yield
        finally:
            await runner.cleanup()

    def background(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The loops to run while the daemon is up, by task name."""
        loops: dict[str, Coroutine[Any, Any, None]] = {}
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            loops["edged.systemd.watchdog"] = self.notifier.watchdog_loop(interval)
        if self.sync is not None:
            loops["edged.sync.drain"] = self.sync.run()
        loops.update(self.mqtt.background())
        if self.results is not None:
            loops.update(self.results.background())
        return loops


async def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit status."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    async with App(settings) as app, asyncio.TaskGroup() as tasks:
        running = [tasks.create_task(coro, name=name) for name, coro in app.background().items()]
        names = ", ".join(settings.functions) or "none"
        app.notifier.ready(f"serving on port {app.http_port}; functions: {names}")
        log.info("edged ready (device %s; functions: %s)", settings.device_id, names)
        await stop.wait()
        log.info("stopping")
        for task in running:
            task.cancel()
    log.info("stopped")
    return 0
