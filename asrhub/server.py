"""Every enabled protocol on its own port, all from one event loop.

One ``web.Application`` per listener, started with AppRunner + TCPSite. Shutdown: stop
accepting, close WebSockets with 1001, drain the executor, run ``asrhub_shutdown``, unload
engines.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import signal
import ssl
import sys
import time
import weakref
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import WSCloseCode, web

from asrhub import __version__
from asrhub.appkeys import HUB_KEY, LISTENER_KEY
from asrhub.connection import OPEN_SOCKETS_KEY
from asrhub.hub import Hub, Listener
from asrhub.loopmon import LoopLagMonitor
from asrhub.metrics import Metrics

log = structlog.get_logger("asrhub.server")


class PortInUse(OSError):
    pass


def _token_ok(request: web.Request, token: str) -> bool:
    offered = request.query.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        offered = auth[7:].strip()
    offered = request.headers.get("X-Asrhub-Token", offered)
    return hmac.compare_digest(offered.encode(), token.encode())


def _guard_middleware(listener: Listener) -> Callable:
    """Token and Origin checks, before any handler (so before any audio is accepted)."""
    token = listener.config.token
    origins = set(listener.config.allowed_origins)

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if token and not _token_ok(request, token):
            return web.json_response({"error": "unauthorized",
                                      "message": "a valid token is required (Authorization: "
                                                 "Bearer <token> or ?token=)"}, status=401)
        origin = request.headers.get("Origin")
        if origins and origin is not None and origin not in origins and "*" not in origins:
            return web.json_response({"error": "forbidden_origin",
                                      "message": f"origin {origin} is not allowed"}, status=403)
        return await handler(request)

    return guard


def service_info(hub: Hub) -> dict:
    asr = hub.loaded_engine("asr")
    return {
        "name": "asrhub",
        "version": __version__,
        "protocols": [
            {"name": lst.label, "port": hub.bound_ports.get(lst.label, lst.config.port),
             "description": lst.spec.description, "tls": bool(lst.config.tls_cert)}
            for lst in hub.enabled_listeners()
        ],
        "engine": hub.engine_name("asr"),
        "model": getattr(asr, "model_name", None),
        "engines": hub.loaded_engines(),
    }


async def health_handler(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    ok, why = hub.health()
    return web.json_response({"status": "ok" if ok else "unavailable", "reason": why,
                              "engines": hub.loaded_engines(), "uptime_s": round(hub.uptime(), 1)},
                             status=200 if ok else 503)


async def services_handler(request: web.Request) -> web.Response:
    """Which protocols listen on which ports: the demo page finds its peers through this."""
    info = service_info(request.app[HUB_KEY])
    return web.json_response(info, headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    body = hub.metrics.render() if hub.metrics is not None else b""
    return web.Response(body=body, headers={"Content-Type": Metrics.content_type})


class Server:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.runners: list[web.AppRunner] = []
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.ports: dict[str, int] = {}
        self.lag = LoopLagMonitor()
        self._stopped = asyncio.Event()

    def build_app(self, listener: Listener) -> web.Application:
        hub = self.hub
        app = web.Application(middlewares=[_guard_middleware(listener)],
                              client_max_size=64 * 1024 * 1024)
        app[HUB_KEY] = hub
        app[LISTENER_KEY] = listener
        app[OPEN_SOCKETS_KEY] = self.sockets
        if listener.extra is None:
            listener.spec.setup(app, hub, listener.settings)
        elif listener.spec.setup_extra is not None:
            listener.spec.setup_extra(app, hub, listener.settings, listener.extra)
        taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
        if ("GET", "/health") not in taken:
            app.router.add_get("/health", health_handler)
        if ("GET", "/metrics") not in taken:
            app.router.add_get("/metrics", metrics_handler)
        if ("GET", "/services") not in taken:
            app.router.add_get("/services", services_handler)
        return app

    async def start(self, *, preload: bool | None = None) -> None:
        hub = self.hub
        if hub.config.server.gil_switch_interval_ms > 0:
            sys.setswitchinterval(hub.config.server.gil_switch_interval_ms / 1000)
        hub.metrics = Metrics(hub)
        hub.make_executor()
        self.lag = LoopLagMonitor(on_sample=hub.metrics.loop_lag.observe)
        self.lag.start()
        hub.loop_lag = self.lag  # type: ignore[attr-defined]
        try:
            for listener in hub.enabled_listeners():
                await self._start_listener(listener)
            preload = hub.config.server.preload if preload is None else preload
            if preload:
                await hub.preload()
            hub.pm.hook.asrhub_startup(hub=hub)
        except BaseException:
            await self._abort_start()
            raise
        hub.ready = True
        log.info("ready", ports=self.ports, engines=hub.loaded_engines())

    async def _start_listener(self, listener: Listener) -> None:
        app = self.build_app(listener)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=self.hub.config.server.drain_timeout)
        await runner.setup()
        ssl_ctx = None
        if listener.config.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(listener.config.tls_cert, listener.config.tls_key)
        site = web.TCPSite(runner, listener.config.host, listener.config.port, ssl_context=ssl_ctx,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                what = "already in use" if exc.errno == errno.EADDRINUSE else "not permitted"
                raise PortInUse(exc.errno, f"port {listener.config.port} on {listener.config.host} "
                                f"for protocol {listener.label!r} is {what}: {exc.strerror}") from None
            raise
        self.runners.append(runner)
        port = listener.config.port
        for sock in getattr(site._server, "sockets", None) or ():  # the real port when 0 was asked
            port = sock.getsockname()[1]
            break
        self.ports[listener.label] = port
        self.hub.bound_ports[listener.label] = port
        scheme = "https/wss" if ssl_ctx else "http/ws"
        log.info("listening", protocol=listener.label, host=listener.config.host, port=port, scheme=scheme)

    async def stop(self) -> None:
        hub = self.hub
        hub.ready = False
        started = time.perf_counter()
        for ws in list(self.sockets):
            if not ws.closed:
                try:
                    await asyncio.wait_for(ws.close(code=WSCloseCode.GOING_AWAY,
                                                    message=b"server shutting down"), 2.0)
                except (TimeoutError, ConnectionError, RuntimeError):
                    pass
        await self._stop_runners()
        if hub.executor is not None:
            await hub.executor.shutdown(hub.config.server.drain_timeout)
        try:
            hub.pm.hook.asrhub_shutdown(hub=hub)
        except Exception:  # noqa: BLE001
            log.exception("shutdown_hook_failed")
        await asyncio.get_running_loop().run_in_executor(None, hub.unload_engines)
        await self.lag.stop()
        log.info("stopped", drain_s=round(time.perf_counter() - started, 3))
        self._stopped.set()

    async def _abort_start(self) -> None:
        """Start-up failed: release ports, threads and the lag monitor before re-raising."""
        await self._stop_runners()
        if self.hub.executor is not None:
            await self.hub.executor.shutdown(drain_timeout=2.0)
        await self.lag.stop()

    async def _stop_runners(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()


async def run_forever(hub: Hub, *, notify: Callable[[str], None] | None = None) -> None:
    """``asrhub serve``: start, report readiness, wait for SIGTERM/SIGINT, stop gracefully."""
    server = Server(hub)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if notify is not None:
        notify("READY=1\nSTATUS=serving " + json.dumps(server.ports))
    watchdog = asyncio.create_task(_watchdog(hub, notify)) if notify is not None else None
    await stop.wait()
    log.info("stopping", reason="signal")
    if notify is not None:
        notify("STOPPING=1")
    if watchdog is not None:
        watchdog.cancel()
    await server.stop()


async def _watchdog(hub: Hub, notify: Callable[[str], None] | None) -> None:
    """Ping systemd's watchdog only while the loop runs and the executor makes progress."""
    import os

    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if not usec or notify is None:
        return
    interval = usec / 1e6 / 2
    last_completed = -1
    stuck_since = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        stats = hub.executor.stats() if hub.executor else None
        if stats is None or stats.busy_workers == 0 or stats.completed != last_completed:
            stuck_since = time.monotonic()
            last_completed = stats.completed if stats else -1
        # A worker busy on one call for longer than 10 minutes counts as hung.
        if time.monotonic() - stuck_since < 600:
            notify("WATCHDOG=1")
