"""The composition root: builds every long-lived part in dependency order and runs until stopped.

Startup order is store -> models -> pool -> MQTT -> HTTP; teardown is the reverse, through one
AsyncExitStack. Background loops (watchdog, cloud sync, MQTT) live in one TaskGroup and are named
``edged.<area>.<loop>``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.cadir import ca_directory_lookup

# aiohttp builds its client TLS contexts at import: let them look CAs up lazily (edged.cadir).
with ca_directory_lookup():
    from aiohttp import web

from edged import __version__
from edged.budget import MemoryBudget, budget_origin, detect_work_budget
from edged.cgroup_limit import detect_memory_limit
from edged.inference.tflite import ModelRegistry
from edged.ingest.body import budget_reservation
from edged.ingest.http import HttpApi
from edged.ingest.listener import HANDLER_OPTIONS, ConnectionGuard, ensure_fd_limit
from edged.ingest.mqtt import MqttIngest
from edged.lifecycle import install_signal_handlers, reload_on_sighup
from edged.malloc import trim_heap
from edged.metrics import Metrics
from edged.pipeline import Pipeline
from edged.reload import read_checked, reloadable, restart_needed
from edged.settings import ConfigError, FunctionSettings, Settings
from edged.startgc import resume as resume_gc
from edged.status import Components
from edged.store import Store
from edged.sync.cloudevents import CloudEvents
from edged.sync.dapr import COMPONENT as DAPR_COMPONENT
from edged.sync.dapr import DaprSync
from edged.systemd import Notifier
from edged.wasm.build import build_pool, model_registry
from edged.wasm.host.nn import NnHost

if TYPE_CHECKING:  # imported at start only when enabled: the deploy service, MQTT's results (paho)
    from edged.deploy import Deployer
    from edged.sync.mqtt_results import ResultPublisher

__all__ = ["App", "ListenError", "run"]

log = logging.getLogger(__name__)

#: How long each shutdown stage may take before the next one goes ahead anyway.
HTTP_DRAIN_SECONDS = 5.0
MIB = 1024 * 1024


class ListenError(Exception):
    """The HTTP API cannot listen where the config says (one line for the operator)."""


class App:
    """One running daemon. ``async with App(settings) as app`` starts it; leaving the block stops it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.components = Components(self.metrics)
        self.notifier = Notifier()
        # One budget for all large work (frames, guests, outputs, bodies): made once, from settings.limits.
        self.budget = MemoryBudget(detect_work_budget(settings.limits))
        self.metrics.watch_budget(self.budget)
        # Functions deployed over the API run beside the config's (edged.deploy); None while deploy is off.
        self.deployer: Deployer | None = None
        if settings.deploy.enabled:
            from edged.deploy import Deployer

            self.deployer = Deployer(self, self.metrics.registry)
        self._swapping = asyncio.Lock()
        # Models are read once, when the stack enters the registry; the pool only borrows interpreters.
        self.models, self.pool = build_pool(self._with_deployed(settings), on_call=self.metrics.on_call,
                                            budget=self.budget)
        if self.deployer is not None:
            self.pool.watch_outcomes(self.deployer.watch.on_outcome)
        #: The registry the current function table uses (a reload with changed models makes a new one).
        self._models_now: ModelRegistry = self.models
        cloudevents = CloudEvents(settings.device_id, settings.sync)
        self.store = Store(settings.state_dir / "edged.db", settings.outbox, cloudevents.admit, self.metrics,
                           history=settings.history)
        self.sync: DaprSync | None = None
        if settings.dapr.enabled:
            self.sync = DaprSync(settings.dapr, settings.sync, self.store, self.components, self.metrics,
                                 cloudevents=cloudevents)
        else:
            self.components.set(DAPR_COMPONENT, "disabled")
        self.pipeline = Pipeline(settings, self.pool, self.store, self.metrics)
        self.results: ResultPublisher | None = None
        if settings.mqtt.enabled:
            from edged.sync.homeassistant import Discovery
            from edged.sync.mqtt_results import ResultPublisher

            discovery = None
            if settings.mqtt.homeassistant.enabled:
                discovery = Discovery(settings.mqtt, settings.device_id, __version__)
            self.results = ResultPublisher(settings.mqtt, settings.mqtt_client_id, self.store, self.metrics,
                                           self.components, discovery)
        self.mqtt = MqttIngest(settings, self.pipeline, self.results, self.metrics, self.components,
                               attempts=self.store)
        self.http = HttpApi(settings, self.pool, self.metrics, self.components, self.pipeline,
                            outbox=self.store, sync=self.sync.status if self.sync is not None else None,
                            reserve_body=budget_reservation(self.budget), deployer=self.deployer,
                            events=self.store)
        self.connections = ConnectionGuard(settings.http, self.metrics)
        self.http_port: int | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> App:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        origin = budget_origin(self.settings.limits, cgroup_limit=detect_memory_limit())
        log.info("memory budget for work: %d MiB (from %s, less reserve_mb = %d)", self.budget.total // MIB,
                 origin, self.settings.limits.reserve_mb)
        log.info("result images stored for: %s", ", ".join(self.settings.image_readers) or "no reader (metadata only)")
        # The models load beside the store and the pool: most of it is the TFLite probe's allocation, which
        # releases the GIL. Shielded: a thread cannot be stopped, so it is always waited for (_settle).
        loading = asyncio.ensure_future(asyncio.to_thread(self.models.load))
        try:
            # The store first: everything after it may commit (and it must outlive the sync loop).
            await self._stack.enter_async_context(self.store)
            self._stack.push_async_exit(self.models)  # left after the pool, as if entered here
            self._stack.callback(lambda: self._models_now.close())  # the latest, if a reload replaced it
            await self._stack.enter_async_context(self.pool)
            await asyncio.shield(loading)  # a bad model stops start here, before anything listens
            if self.results is not None:
                await self._stack.enter_async_context(self.results)  # closed after ingest stops
            await self._stack.enter_async_context(self.mqtt)
            await self._stack.enter_async_context(self._serve_http())
        except BaseException:
            await _settle(loading)
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
        http = self.settings.http
        app = self.http.application()
        app.middlewares.insert(0, self.connections.middleware)  # outermost: it sees every request start
        runner = web.AppRunner(app, shutdown_timeout=HTTP_DRAIN_SECONDS, handle_signals=False, **HANDLER_OPTIONS)
        await runner.setup()
        try:
            assert runner.server is not None
            ensure_fd_limit(http)
            try:
                listener = await self.connections.listen(runner.server, http.host, http.port)
            except OSError as exc:
                why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
                raise ListenError(f"port {http.port} {why} (http.host {http.host}, http.port {http.port})") from exc
            try:
                self.http_port = int(listener.sockets[0].getsockname()[1])
                log.info("listening on http://%s:%s", http.host, self.http_port)
                yield
            finally:
                listener.close()  # no new connections; the runner drains the open ones
        finally:
            await runner.cleanup()
            self.connections.close()

    async def reload(self, path: Path | None) -> bool:
        """Apply the config at ``path`` if it passes check-config's checks; otherwise keep the running one.

        Functions and models are swapped whole (calls in flight finish on the old ones), MQTT filters
        change on the live connection, anything else that differs is logged as needing a restart.
        """
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(read_checked, path)
            for line in restart_needed(self.settings, new):
                log.warning("reload: %s", line)
            wanted = reloadable(self.settings, new)
            # The deployer's lock first, as a deploy takes it: the registry does not change under the swap.
            async with self.deployer.lock if self.deployer is not None else nullcontext(), self._swapping:
                await self._swap_functions(wanted, self._with_deployed(wanted).functions)
        except ConfigError as exc:  # also a module that does not load in the running engine
            log.error("reload refused, the running config stays: %s", exc)
            return False
        finally:
            self.notifier.ready(f"serving on port {self.http_port}; functions: {_names(self.settings)}")
        self.mqtt.resubscribe(wanted.mqtt.subscriptions)
        self.settings = wanted
        log.info("reloaded (functions: %s)", _names(wanted))
        return True

    def _with_deployed(self, settings: Settings, deployed: Mapping[str, FunctionSettings] | None = None) -> Settings:
        """``settings`` with the deployed functions beside its own: the one place the two are merged."""
        if self.deployer is None:
            return settings
        from edged.deploy import merge_functions

        return merge_functions(settings, self.deployer.live(settings.models) if deployed is None else deployed)

    def compile_module(self, wasm: bytes, label: str) -> None:
        """An uploaded module compiled into the running engine's cache (ValueError if it does not compile)."""
        self.pool.compile(wasm, label)

    async def apply_deployed(self, functions: Mapping[str, FunctionSettings]) -> None:
        """Swap in the config's functions plus ``functions`` (the deployed ones), as a reload does."""
        async with self._swapping:
            await self._swap_functions(self.settings, self._with_deployed(self.settings, functions).functions)

    async def _swap_functions(self, wanted: Settings, functions: Mapping[str, FunctionSettings]) -> None:
        """Make ``functions`` the pool's table, with ``wanted``'s models (new ones loaded first)."""
        if wanted.models == self.settings.models:
            await asyncio.to_thread(self.pool.swap, functions, self.pool.extension)
            return
        models = model_registry(wanted)
        await asyncio.to_thread(models.load)
        try:
            await asyncio.to_thread(self.pool.swap, functions, NnHost(models), self._models_now.close)
        except BaseException:
            models.close()
            raise
        self._models_now = models

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
        if self.deployer is not None:
            loops["edged.deploy.rollback"] = self.deployer.run()
        return loops


async def _settle(loading: asyncio.Future[None]) -> None:
    """Wait until the models' load is over, whatever its outcome (the error that stops start is raised)."""
    await asyncio.wait([loading])
    if not loading.cancelled():
        loading.exception()  # retrieved: the start already fails with an error of its own


def _names(settings: Settings) -> str:
    return ", ".join(settings.functions) or "none"


async def _reloads(app: App, path: Path | None, requested: asyncio.Event) -> None:
    """Reload each time SIGHUP sets ``requested`` (waits on the event: no wakeups in between)."""
    while True:
        await requested.wait()
        requested.clear()
        await app.reload(path)


async def run(settings: Settings, config_path: Path | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT, reloading ``config_path`` on SIGHUP; return the exit status."""
    stop = asyncio.Event()
    reload = asyncio.Event()
    install_signal_handlers(stop)
    reload_on_sighup(reload)
    async with App(settings) as app, asyncio.TaskGroup() as tasks:
        running = [tasks.create_task(coro, name=name) for name, coro in app.background().items()]
        running.append(tasks.create_task(_reloads(app, config_path, reload), name="edged.reload"))
        names = _names(settings)
        app.notifier.ready(f"serving on port {app.http_port}; functions: {names}")
        log.info("edged ready (device %s; functions: %s)", settings.device_id, names)
        resume_gc(freeze=True)  # start's cycles collected, its survivors never walked again (edged.startgc)
        trim_heap()  # what startup freed (imports, the model probe) goes back before the daemon idles
        await stop.wait()
        log.info("stopping")
        for task in running:
            task.cancel()
    log.info("stopped")
    return 0
