"""Every enabled protocol on its own port, all from one event loop.

One ``web.Application`` per listener, started with AppRunner + TCPSite. Shutdown: stop
accepting, close WebSockets with 1001, drain the executor, run ``asrhub_shutdown``, unload
engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hmac
import json
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from asrhub.appkeys import (
    CONTEXT_KEY,
    CREDENTIAL_KEY,
    HUB_KEY,
    LISTENER_KEY,
    PUBLIC_PREFIXES_KEY,
    REFUSAL_KEY,
)
from asrhub.config import Config
from asrhub.hub import Hub, Listener
from asrhub.logsetup import configure_logging
from asrhub.metrics import Metrics
from asrhub.protocol import (
    ANONYMOUS,
    Credential,
    ListenerSettings,
    ProtocolContext,
    Transport,
    limits_of,
    token_scope,
)

log = structlog.get_logger("asrhub.server")


class PortInUse(OSError):
    pass


def _offered_token(request: web.Request) -> str:
    """Bearer header, X-Asrhub-Token or ?token=; an empty header does not hide a valid query."""
    offered = request.query.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        offered = auth[7:].strip() or offered
    return request.headers.get("X-Asrhub-Token", "").strip() or offered


def _credential(request: web.Request, tokens: tuple[str, ...], admin_token: str) -> Credential | None:
    """The credential ``request`` presents: the admin token, one of the listener's tokens, or
    anonymous when the listener asks for none; None when it asks for one and got none of them.
    Every token is compared, in constant time, whatever matched before."""
    # Header text may hold anything a client sent (surrogate escapes included): compare bytes.
    offered = _offered_token(request).encode("utf-8", "surrogatepass")
    admin = bool(admin_token) and hmac.compare_digest(offered, admin_token.encode("utf-8", "surrogatepass"))
    matched = ""
    for token in tokens:
        if hmac.compare_digest(offered, token.encode("utf-8", "surrogatepass")):
            matched = token
    if admin:
        return Credential(token_scope(admin_token), admin=True)
    if matched:
        return Credential(token_scope(matched))
    return None if tokens else ANONYMOUS


def _same_host(origin: str, request: web.Request) -> bool:
    """The hub's own pages (any of its ports on the host the client reached) may connect."""
    try:
        origin_host = URL(origin).host or ""
    except ValueError:
        return False
    request_host = (request.host or "").rsplit("]", 1)[-1]
    request_host = URL(f"http://{request.host}").host or request_host
    loopback = {"localhost", "127.0.0.1", "::1"}
    return origin_host == request_host or (origin_host in loopback and request_host in loopback)


def _cors_headers(request: web.Request, origin: str) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if request.method == "OPTIONS":  # a preflight: what the real request may carry
        headers.update({"Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                        "Access-Control-Allow-Headers": request.headers.get(
                            "Access-Control-Request-Headers", "")[:512],
                        "Access-Control-Max-Age": "600"})
    return headers


def _guard_middleware(state: ListenerState) -> Callable:
    """Token and Origin checks before any handler (so before any audio is accepted), and the
    request's log context. Reads ``state`` on every request, so a reload applies at once."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        origins = state.allowed_origins
        origin = request.headers.get("Origin")
        # An allowed origin (listed, or the hub's own pages on another port of this host) may
        # read the answers: the demo page uploads to the OpenAI API port, for one.
        cors = origin if origin is not None and (
            "*" in origins or origin in origins or (not origins and _same_host(origin, request))) else None
        if cors and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=_cors_headers(request, cors))
        credential = _credential(request, state.token, state.admin_token)
        if credential is None and not state.is_public(request.path):
            refusal = state.refuse(401, "unauthorized", "a valid token is required (Authorization: "
                                                        "Bearer <token> or ?token=)")
            if cors:
                refusal.headers.update(_cors_headers(request, cors))
            return refusal
        request[CREDENTIAL_KEY] = credential or ANONYMOUS
        if origin is not None and "*" not in origins and origin not in origins:
            upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
            # Listed origins only; without a list, the hub's own pages (same host) only. Plain
            # HTTP reads are not blocked (a browser keeps their answers from other origins).
            if (origins or upgrade or request.method not in ("GET", "HEAD", "OPTIONS")) \
                    and not (not origins and _same_host(origin, request)):
                return state.refuse(403, "forbidden_origin", f"origin {origin} is not allowed")
        response = await handler(request)
        if cors and not response.prepared:  # (a WebSocket or a stream has sent its headers)
            response.headers.update(_cors_headers(request, cors))
        return response

    return guard


def _request_middleware(ctx_name: str, hub: Hub) -> Callable:
    """Per-request log context and counter; client errors are logged below error level."""

    @web.middleware
    async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        status = 500
        with structlog.contextvars.bound_contextvars(protocol=ctx_name, peer=request.remote or "?",
                                                     method=request.method, path=request.path):
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                if status >= 500:
                    log.warning("http_error", status=status)
                raise
            except asyncio.CancelledError:
                status = 499  # client went away
                raise
            except Exception:
                # Logged once here; the client gets a plain 500, never a traceback.
                log.exception("http_handler_failed")
                return web.json_response({"error": "internal",
                                          "message": "internal server error"}, status=500)
            finally:
                hub.metrics.http_requests.labels(protocol=ctx_name, status=str(status)).inc()

    return observe


async def health_handler(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    ok, why = hub.health()
    body = {"status": "ok" if ok else "unavailable", "reason": why,
            "engines": hub.loaded_engines(), "uptime_s": round(hub.uptime(), 1)}
    if hub.cluster is not None:
        # Reported, not fatal: every instance shares the Redis, so failing health on it would
        # take the whole cluster out of the load balancer; features that need it say so.
        body["cluster"] = hub.cluster.status()
    return web.json_response(body, status=200 if ok else 503)


async def services_handler(request: web.Request) -> web.Response:
    """Which protocols listen on which ports: the demo page finds its peers through this."""
    return web.json_response(request.app[HUB_KEY].service_info(),
                             headers={"Cache-Control": "no-store"})


async def metrics_handler(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return web.Response(body=hub.metrics.render(), headers={"Content-Type": Metrics.content_type})


class ListenerState:
    """What a reload may change on a running listener without dropping connections."""

    def __init__(self, listener: Listener, admin_token: str = "") -> None:
        self.token = listener.config.token
        self.admin_token = admin_token
        self.allowed_origins = set(listener.config.allowed_origins)
        self.public_prefixes: tuple[str, ...] = ()
        self.refusal: Callable[[int, str, str], web.StreamResponse] | None = None

    def refuse(self, status: int, code: str, message: str) -> web.StreamResponse:
        """The guard's refusal, in the listener's own error shape when it has one."""
        if self.refusal is not None:
            return self.refusal(status, code, message)
        return web.json_response({"error": code, "message": message}, status=status)

    def is_public(self, path: str) -> bool:
        """Static assets of the demo page: served without a token so the page can load; the
        page then sends the token on every connection it opens."""
        return any(path.startswith(prefix) for prefix in self.public_prefixes)


class Server:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.runners: list[web.AppRunner] = []
        self.tcp_servers: list[asyncio.AbstractServer] = []
        self.ports: dict[str, int] = {}
        self.transport = Transport(hub)
        self.contexts: dict[str, ProtocolContext] = {}
        self.states: dict[str, ListenerState] = {}
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Future | None = None

    @property
    def lag(self):
        return self.hub.loop_lag

    def make_context(self, listener: Listener, app: web.Application | None) -> ProtocolContext:
        hub = self.hub
        return ProtocolContext(name=listener.label, hub=hub, settings=listener.settings,
                               listener=listener.config, executor=hub.executor,
                               metrics=hub.metrics, loop_lag=hub.loop_lag,
                               transport=self.transport, app=app, extra=listener.extra)

    def build_app(self, listener: Listener) -> web.Application:
        hub = self.hub
        state = self.states[listener.label] = ListenerState(listener, hub.config.server.admin_token)
        app = web.Application(middlewares=[_request_middleware(listener.label, hub),
                                           _guard_middleware(state)],
                              client_max_size=limits_of(listener.settings).max_body_bytes)
        app[HUB_KEY] = hub
        app[LISTENER_KEY] = listener
        ctx = self.contexts[listener.label] = self.make_context(listener, app)
        app[CONTEXT_KEY] = ctx
        if listener.extra is None:
            listener.spec.setup(ctx)
        elif listener.spec.setup_extra is not None:
            listener.spec.setup_extra(ctx)
        if PUBLIC_PREFIXES_KEY in app:
            prefixes: tuple[str, ...] = app[PUBLIC_PREFIXES_KEY]
            state.public_prefixes = prefixes
        if REFUSAL_KEY in app:
            state.refusal = app[REFUSAL_KEY]
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
        hub.make_executor()
        hub.loop_lag.start()
        if hub.cluster is not None:
            hub.cluster.start()
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
        self._warn_if_open()
        log.info("ready", ports=self.ports, engines=hub.loaded_engines())

    def _warn_if_open(self) -> None:
        for lst in self.hub.enabled_listeners():
            if lst.spec.transport == "tcp":
                continue  # no token applies; such a plugin warns in its own words
            if lst.config.host not in ("127.0.0.1", "::1", "localhost") and not lst.config.token:
                log.warning("listening_without_token", protocol=lst.label, host=lst.config.host,
                            hint="anyone who can reach this address can use it: set [server] "
                                 "token or bind host = \"127.0.0.1\"")

    def _ssl_context(self, listener: Listener) -> ssl.SSLContext | None:
        if not listener.config.tls_cert:
            return None
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(listener.config.tls_cert, listener.config.tls_key)
        return ssl_ctx

    async def _start_listener(self, listener: Listener) -> None:
        ssl_ctx = self._ssl_context(listener)
        try:
            if listener.spec.transport == "tcp":
                port = await self._start_tcp(listener, ssl_ctx)
            else:
                port = await self._start_http(listener, ssl_ctx)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                what = "already in use" if exc.errno == errno.EADDRINUSE else "not permitted"
                raise PortInUse(exc.errno, f"port {listener.config.port} on {listener.config.host} "
                                f"for protocol {listener.label!r} is {what}: {exc.strerror}") from None
            raise
        self.ports[listener.label] = port
        self.hub.bound_ports[listener.label] = port
        scheme = {("tcp", False): "tcp", ("tcp", True): "tls"}.get(
            (listener.spec.transport, bool(ssl_ctx)), "https/wss" if ssl_ctx else "http/ws")
        log.info("listening", protocol=listener.label, host=listener.config.host, port=port, scheme=scheme)

    async def _start_http(self, listener: Listener, ssl_ctx: ssl.SSLContext | None) -> int:
        app = self.build_app(listener)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=self.hub.config.server.drain_timeout,
                               # aiohttp arms this from the connection's start: a client that
                               # has not completed its headers by then is closed (slowloris)
                               keepalive_timeout=self.hub.config.server.header_timeout_s)
        await runner.setup()
        site = web.TCPSite(runner, listener.config.host, listener.config.port, ssl_context=ssl_ctx,
                           reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self.runners.append(runner)
        for sock in getattr(site._server, "sockets", None) or ():  # the real port when 0 was asked
            return int(sock.getsockname()[1])
        return listener.config.port

    async def _start_tcp(self, listener: Listener, ssl_ctx: ssl.SSLContext | None) -> int:
        ctx = self.contexts[listener.label] = self.make_context(listener, None)
        listener.spec.setup(ctx)
        if ctx.tcp_route is None:
            raise RuntimeError(f"protocol {listener.label!r} is transport='tcp' but its setup "
                               "did not call ctx.serve_tcp(route)")
        limit = limits_of(listener.settings).max_message_bytes * 4

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self.transport.serve_stream(ctx, reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                if not writer.is_closing():
                    writer.close()

        server = await asyncio.start_server(accept, listener.config.host, listener.config.port,
                                            ssl=ssl_ctx, limit=limit, reuse_address=True)
        self.tcp_servers.append(server)
        return int(server.sockets[0].getsockname()[1]) if server.sockets else listener.config.port

    async def stop(self) -> None:
        """Idempotent: a second call waits for the first."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        hub = self.hub
        hub.ready = False
        started = time.perf_counter()
        # Stop accepting, then let every session flush its finals before its client sees 1001.
        for tcp in self.tcp_servers:
            tcp.close()
        await self.transport.shutdown(hub.config.server.drain_timeout)
        await self._stop_runners()
        await hub.executor.shutdown(hub.config.server.drain_timeout)
        try:
            hub.pm.hook.asrhub_shutdown(hub=hub)
        except Exception:  # noqa: BLE001
            log.exception("shutdown_hook_failed")
        await asyncio.get_running_loop().run_in_executor(None, hub.unload_engines)
        await hub.loop_lag.stop()
        if hub.cluster is not None:
            await hub.cluster.close()
        log.info("stopped", drain_s=round(time.perf_counter() - started, 3))
        self._stopped.set()

    async def _abort_start(self) -> None:
        """Start-up failed: release ports, threads and the lag monitor before re-raising."""
        await self._stop_runners()
        await self.hub.executor.shutdown(drain_timeout=2.0)
        await self.hub.loop_lag.stop()
        if self.hub.cluster is not None:
            await self.hub.cluster.close()

    async def _stop_runners(self) -> None:
        for tcp in self.tcp_servers:
            tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tcp.wait_closed(), 2.0)
        self.tcp_servers.clear()
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()

    def reload(self, config: Config) -> list[str]:
        """Apply a re-read config to the running server; returns what needs a restart.

        Applied at once: log level and format, every listener's tokens (and the admin token)
        and allowed origins, and each protocol's shared limits (:class:`ListenerSettings`: new
        connections get them).
        Anything else (ports, hosts, TLS, engines, protocol-specific settings) is named in the
        log as needing a restart and keeps its running value.
        """
        from asrhub.hub import Hub

        fresh = Hub(config, self.hub.pm)  # validates exactly as start-up does; loads nothing
        needs_restart: list[str] = []
        if config.server.log_level != self.hub.config.server.log_level \
                or config.server.log_format != self.hub.config.server.log_format:
            configure_logging(config.server.log_level, config.server.log_format)
        for old in self.hub.listeners:
            new = next((lst for lst in fresh.listeners if lst.label == old.label), None)
            if new is None:
                continue
            state = self.states.get(old.label)
            if state is not None:
                state.token = new.config.token
                state.admin_token = config.server.admin_token
                state.allowed_origins = set(new.config.allowed_origins)
            for key in ("enabled", "host", "port", "tls_cert", "tls_key"):
                if getattr(old.config, key) != getattr(new.config, key):
                    needs_restart.append(f"[protocols.{old.label}] {key}")
            ctx = self.contexts.get(old.label)
            if ctx is not None:
                # what a plugin reads of its listener: the token and origins now in force
                ctx.listener = dataclasses.replace(ctx.listener, token=new.config.token,
                                                   allowed_origins=new.config.allowed_origins)
            if ctx is not None and new.settings != ctx.settings:
                changed = _changed_fields(ctx.settings, new.settings)
                shared = {f.name for f in dataclasses.fields(ListenerSettings)}
                if isinstance(ctx.settings, ListenerSettings):
                    kept = {k: getattr(new.settings, k) for k in changed if k in shared}
                    if kept:
                        ctx.settings = dataclasses.replace(ctx.settings, **kept)
                needs_restart += [f"[protocols.{old.label}] {k}" for k in changed if k not in shared]
        for key in ("state_dir", "host", "drain_timeout", "preload"):
            if getattr(config.server, key) != getattr(self.hub.config.server, key):
                needs_restart.append(f"[server] {key}")
        if config.executor != self.hub.config.executor:
            needs_restart.append("[executor]")
        if config.engines != self.hub.config.engines or config.engine_sections != self.hub.config.engine_sections:
            needs_restart.append("[engines]")
        log.info("reloaded", source=config.source, needs_restart=needs_restart)
        return needs_restart


def _changed_fields(old: Any, new: Any) -> list[str]:
    if not (dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new)):
        return [] if old == new else ["(settings)"]
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


async def run_forever(hub: Hub, *, notify: Callable[[str], None] | None = None,
                      reload_config: Callable[[], Config] | None = None) -> None:
    """``asrhub serve``: start, report readiness, wait for SIGTERM/SIGINT, stop gracefully.
    SIGHUP re-reads the config (``reload_config``) and applies what can change at run time."""
    server = Server(hub)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        if reload_config is None:
            log.info("reload_ignored", reason="no config source to re-read")
            return
        if notify is not None:
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            server.reload(reload_config())
        except Exception as exc:  # noqa: BLE001 - a bad edit must not kill a running service
            log.error("reload_failed", error=str(exc))
        if notify is not None:
            notify("READY=1")

    loop.add_signal_handler(signal.SIGHUP, on_hup)
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
        stats = hub.executor.stats() if hub.has_executor else None
        if stats is None or stats.busy_workers == 0 or stats.completed != last_completed:
            stuck_since = time.monotonic()
            last_completed = stats.completed if stats else -1
        # A worker busy on one call for longer than 10 minutes counts as hung.
        if time.monotonic() - stuck_since < 600:
            notify("WATCHDOG=1")
