"""The protocol kit: the one core path every wire protocol goes through.

A protocol plugin supplies three things and nothing of the transport:

- a **schema** (``messages.py``): parse/dump of its messages; bad input raises
  :class:`ProtocolError` with the protocol's own code;
- a **session** (``session.py``): a :class:`Session` subclass, a state machine that talks to the
  client only through the :class:`Channel` it is given (``send_json``/``send_bytes``/
  ``send_error``/``close``) and never touches a socket;
- an **adapter** of a few lines (``handler.py``): a :class:`WebSocketRoute` or :class:`TcpRoute`
  naming the path, the session factory, the protocol's error envelope and its error codes,
  registered with ``ctx.websocket(route)`` / ``ctx.serve_tcp(route)`` in the spec's ``setup``.

The core owns the rest, written once here: accepting the connection, the connection limit
(per listener and per peer), message-size limit (answered with the protocol's own error, the
connection kept), heartbeat, the bounded outbox (a writer that can never die silently), the
receive loop, mapping busy/closed executors and engine failures to the protocol's codes, error
counting, metrics, one summary line per connection, and a graceful shutdown that lets each
session flush its finals before the client sees 1001.

Plain HTTP endpoints are plugins too: ``ctx.app`` is an aiohttp application whose body-size
limit is the listener's ``max_body_bytes`` and whose requests get a log context, a request
counter and client errors logged below error level (see :mod:`asrhub.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import WSMsgType, web

from asrhub.appkeys import CREDENTIAL_KEY
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority

if TYPE_CHECKING:
    from asrhub.config import ListenerConfig
    from asrhub.executor import InferenceExecutor
    from asrhub.hub import EngineKind, Hub
    from asrhub.loopmon import LoopLagMonitor
    from asrhub.metrics import Metrics

log = structlog.get_logger("asrhub.protocol")
_conn_ids = itertools.count(1)
R = TypeVar("R")

# WebSocket close codes the kit uses (RFC 6455 / IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


class ProtocolError(Exception):
    """A client-visible error with the protocol's own ``code``.

    Raised by a schema's parser or a session's handler, it becomes the protocol's error message
    (the route's ``error_message``); the connection stays open unless ``fatal``, in which case
    it is closed with ``close_code`` (1008 by default). ``status`` and ``param`` serve HTTP
    protocols (e.g. OpenAI's error shape); ``extra`` is copied into envelopes that want it.
    """

    def __init__(self, code: str | int, message: str, *, fatal: bool = False,
                 close_code: int | None = None, status: int = 400, param: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.close_code = close_code if close_code is not None else CLOSE_POLICY
        self.status = status
        self.param = param
        self.extra = extra


@dataclass(frozen=True)
class ErrorCodes:
    """A protocol's codes for the errors the core itself detects."""

    bad_message: str | int  # malformed JSON, wrong types, an unexpected binary/text frame
    too_big: str | int  # a message over max_message_bytes (the connection is kept)
    busy: str | int  # the inference executor is full or shutting down
    internal: str | int  # an unexpected failure inside the hub (the connection is closed)
    too_many_connections: str | int  # over max_connections / max_connections_per_peer


@dataclass(frozen=True)
class ListenerSettings:
    """Limits every listener has, under one name each; a protocol's settings class inherits
    from this and may override the defaults by redeclaring a field."""

    # Open connections on this listener (0 = no limit), and from one peer address (127.0.0.1
    # and ::1, where a local reverse proxy connects from, are not limited per peer).
    max_connections: int = 64
    max_connections_per_peer: int = 16
    # Largest single message (WebSocket frame / framed TCP message). A larger one is answered
    # with the protocol's too_big error and dropped; the connection stays open. Messages over
    # four times this close the connection (1009) without being read into memory.
    max_message_bytes: int = 1024 * 1024
    # Outbound messages queued for a slow client before it is closed (1008).
    max_outbox: int = 256
    # WebSocket ping interval; a client that answers no ping within it is closed (0 = off).
    heartbeat_s: float = 30.0
    # How long after a ping a client may stay silent (no pong, no message) before it is closed;
    # 0 = half of heartbeat_s (aiohttp's rule). A ping is only sent after heartbeat_s without
    # a message, so a client is closed after heartbeat_s + this of silence.
    heartbeat_timeout_s: float = 0.0
    # Largest HTTP request body on this listener (uploads, multipart forms).
    max_body_bytes: int = 64 * 1024 * 1024

    def validate(self) -> None:
        if min(self.max_connections, self.max_connections_per_peer) < 0:
            raise ValueError("max_connections and max_connections_per_peer must be >= 0")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be >= 1024")
        if self.max_outbox < 1:
            raise ValueError("max_outbox must be >= 1")
        if self.heartbeat_s < 0 or not math.isfinite(self.heartbeat_s):
            raise ValueError("heartbeat_s must be >= 0")
        if self.heartbeat_timeout_s < 0 or not math.isfinite(self.heartbeat_timeout_s):
            raise ValueError("heartbeat_timeout_s must be >= 0")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be >= 1024")


DEFAULT_LIMITS = ListenerSettings()


def limits_of(settings: Any) -> ListenerSettings:
    return settings if isinstance(settings, ListenerSettings) else DEFAULT_LIMITS


# ----------------------------------------------------------------------------- JSON


def dumps(message: Any) -> str:
    """JSON text for the wire: UTF-8 when it can be, escaped when a lone surrogate (echoed from
    a client) would make it unencodable, so a writer never fails on it."""
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(message, ensure_ascii=True, allow_nan=False, default=str)
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 40:
        raise ValueError("integer too large")
    return int(text)


_BRACKETS = re.compile(r"[\[\]{}]")


def loads(text: str | bytes, *, max_depth: int = 32) -> Any:
    """Parse a client's JSON: total over any input. NaN/Infinity, integers of more than 40
    digits and nesting deeper than ``max_depth`` are :class:`ValueError`, like malformed JSON."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    # Structural pre-check (json recursion is limited by the C stack otherwise), walking the
    # brackets only: a loop over every character held the event loop ~1 s per 10 MB message.
    if text.count("[") + text.count("{") > max_depth:
        depth = 0
        for bracket in _BRACKETS.findall(text):
            if bracket in "[{":
                depth += 1
                if depth > max_depth:
                    raise ValueError(f"JSON nested deeper than {max_depth}")
            else:
                depth -= 1
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# ----------------------------------------------------------------------------- sessions


@dataclass
class CloseInfo:
    """Why a session ends: the client left, the server is shutting down (flush finals now:
    the channel still sends), or the connection failed."""

    reason: str
    shutdown: bool = False
    code: int | None = None


class Session:
    """Base class of a protocol's socket-free session. Override what the protocol receives."""

    audio_seconds: float = 0.0
    processing_seconds: float = 0.0

    async def on_open(self) -> None:
        """The connection is accepted (send a greeting here)."""

    async def on_text(self, text: str) -> None:
        raise ProtocolError("bad_message", "text messages are not part of this protocol")

    async def on_binary(self, data: bytes) -> None:
        raise ProtocolError("bad_message", "binary messages are not part of this protocol")

    async def on_message(self, message: Any) -> None:
        """One framed message of a TCP protocol (what the route's ``read_message`` returned)."""
        raise NotImplementedError

    async def on_close(self, info: CloseInfo) -> None:
        """The connection ends. With ``info.shutdown`` the channel is still open: send the
        finals for audio already received, then return. Must not raise."""

    def summary(self) -> dict[str, Any]:
        """Protocol-specific fields for the connection's summary line."""
        return {}


# ----------------------------------------------------------------------------- credential


@dataclass(frozen=True)
class Credential:
    """Which credential the core's guard accepted for a connection or HTTP request, for a
    plugin's own access rules (who may overwrite a voiceprint, whose entries a list shows).

    ``scope``: a stable, non-reversible id of the token the client presented
    (:func:`token_scope`); "" when the listener asks for no token (an anonymous client).
    ``admin``: it was ``[server] admin_token``."""

    scope: str = ""
    admin: bool = False


ANONYMOUS = Credential()


def token_scope(token: str) -> str:
    """The scope id of ``token``: the first 16 hex digits of its SHA-256 (stored with what a
    client creates; the token itself is never stored)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def credential_of(request: web.BaseRequest | None) -> Credential:
    """The credential the core's guard accepted for ``request`` (anonymous without one)."""
    return request.get(CREDENTIAL_KEY, ANONYMOUS) if request is not None else ANONYMOUS


# ----------------------------------------------------------------------------- channel


class Channel:
    """The session's only way to the client: a bounded outbox drained by one writer task.

    ``send_*`` never block on a slow client; past ``max_outbox`` queued messages the client is
    closed with 1008. A failure inside the writer closes the connection with 1011 and is logged
    once; it never leaves a connection that silently stops answering.
    """

    def __init__(self, ctx: ProtocolContext, route: WebSocketRoute | TcpRoute, peer: str,
                 max_outbox: int) -> None:
        self.ctx = ctx
        self.route = route
        self.protocol = ctx.name
        self.conn_id = f"{ctx.name}-{next(_conn_ids)}"
        self.peer = peer
        # who the client proved to be (a WebSocket's upgrade request; TCP: anonymous)
        self.credential = ANONYMOUS
        self.opened = time.monotonic()
        self.close_reason = "client closed"
        self.close_code: int | None = None
        self.errors_sent = 0
        self._outbox: asyncio.Queue[str | bytes] = asyncio.Queue(max_outbox)
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._drain(), name=f"outbox-{self.conn_id}")

    # ---- what a session calls

    @property
    def closed(self) -> bool:
        return self._closing or self._transport_closed()

    def send_json(self, message: Any) -> None:
        self._put(dumps(message))

    def send_text(self, text: str) -> None:
        self._put(text)

    def send_bytes(self, data: bytes) -> None:
        self._put(bytes(data))

    def send_error(self, err: ProtocolError) -> None:
        """The protocol's error message for ``err`` (counted); closes the connection if fatal."""
        self.count_error(err.code)
        envelope = self.route.error_message(err)
        if envelope is not None:
            if isinstance(envelope, bytes | str):
                self._put(envelope)
            else:
                self.send_json(envelope)
        if err.fatal:
            self.close_soon(err.close_code, err.message)

    def count_error(self, code: str | int) -> None:
        self.errors_sent += 1
        self.ctx.hub.count_error(self.protocol, code)

    def close_soon(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close after what is queued has been written (callable from sync code)."""
        if not self._closing:
            self._closing = True
            self.close_code = code
            if reason:
                self.close_reason = reason
            asyncio.get_running_loop().create_task(self._close_after_flush(code, reason))

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        self._closing = True
        self.close_code = self.close_code or code
        if reason:
            self.close_reason = reason
        await self.flush(2.0)
        await self._transport_close(code, reason)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far has been written."""
        deadline = time.monotonic() + timeout
        while not self._outbox.empty() and not self._transport_closed() and not self._writer.done():
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.005)

    # ---- internals

    def _put(self, item: str | bytes) -> None:
        if self._closing or self._transport_closed():
            return
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("outbox_full", limit=self._outbox.maxsize)
            self.close_soon(CLOSE_POLICY, "client too slow: outbound queue full")

    async def _close_after_flush(self, code: int, reason: str) -> None:
        await self.flush(2.0)
        await self._transport_close(code, reason)

    async def _drain(self) -> None:
        while True:
            item = await self._outbox.get()
            try:
                await self._write(item)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - never die silently
                if self._transport_closed():
                    return
                log.error("outbox_writer_failed", error=repr(exc))
                self._closing = True
                self.close_reason = f"server error while sending: {exc.__class__.__name__}"
                self.close_code = CLOSE_INTERNAL
                await self._transport_close(CLOSE_INTERNAL, "server error while sending")
                return

    async def _stop_writer(self) -> None:
        await self.flush(2.0)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._writer

    # transport specifics
    def _transport_closed(self) -> bool:
        raise NotImplementedError

    async def _write(self, item: str | bytes) -> None:
        raise NotImplementedError

    async def _transport_close(self, code: int, reason: str) -> None:
        raise NotImplementedError


def close_reason_bytes(reason: str, limit: int = 123) -> bytes:
    """A WebSocket close reason fits in 123 bytes; cut between characters, never inside one."""
    data = reason.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode()


class WebSocketChannel(Channel):
    def __init__(self, ctx: ProtocolContext, route: WebSocketRoute, peer: str, max_outbox: int,
                 ws: web.WebSocketResponse) -> None:
        self.ws = ws
        super().__init__(ctx, route, peer, max_outbox)

    def _transport_closed(self) -> bool:
        return self.ws.closed

    async def _write(self, item: str | bytes) -> None:
        if self.ws.closed:
            return
        if isinstance(item, bytes):
            await self.ws.send_bytes(item)
        else:
            await self.ws.send_str(item)

    async def _transport_close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(self.ws.close(code=code, message=close_reason_bytes(reason)), 2.0)


class StreamChannel(Channel):
    def __init__(self, ctx: ProtocolContext, route: TcpRoute, peer: str, max_outbox: int,
                 writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        super().__init__(ctx, route, peer, max_outbox)

    def _transport_closed(self) -> bool:
        return self.writer.is_closing()

    async def _write(self, item: str | bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(item.encode() if isinstance(item, str) else item)
        await self.writer.drain()

    async def _transport_close(self, code: int, reason: str) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


# ----------------------------------------------------------------------------- routes


SessionFactory = Callable[[Channel, Any], "Session | Awaitable[Session]"]


@dataclass(frozen=True)
class WebSocketRoute:
    """What a WebSocket protocol hands the core: ``open_session(channel, request)`` builds its
    session, ``error_message(err)`` is its error envelope (a dict sent as JSON, text, bytes or
    None for nothing), ``codes`` its codes for the core's own errors. A plain HTTP GET on the
    path (no upgrade) goes to ``http_get`` if given, else gets 426 with a short usage note.
    ``protocols``: WebSocket subprotocols the server selects when a client offers one."""

    path: str
    open_session: SessionFactory
    error_message: Callable[[ProtocolError], Any]
    codes: ErrorCodes
    http_get: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
    usage: str = ""
    protocols: tuple[str, ...] = ()


@dataclass(frozen=True)
class TcpRoute:
    """A framed TCP protocol: ``read_message(reader, max_message_bytes)`` returns the next
    message (None at end of stream) or raises :class:`ProtocolError`; sessions get them in
    ``on_message``."""

    read_message: Callable[[asyncio.StreamReader, int], Awaitable[Any]]
    open_session: SessionFactory
    error_message: Callable[[ProtocolError], Any]
    codes: ErrorCodes


# ----------------------------------------------------------------------------- context


@dataclass
class ProtocolContext:
    """Everything the core hands a protocol plugin's ``setup``: complete when it is built."""

    name: str
    hub: Hub
    settings: Any
    listener: ListenerConfig
    executor: InferenceExecutor
    metrics: Metrics
    loop_lag: LoopLagMonitor
    transport: Transport
    app: web.Application | None = None
    extra: str | None = None
    tcp_route: TcpRoute | None = field(default=None, init=False)

    @property
    def limits(self) -> ListenerSettings:
        return limits_of(self.settings)

    def websocket(self, route: WebSocketRoute) -> None:
        """Serve ``route`` on this listener (GET ``route.path``)."""
        if self.app is None:
            raise RuntimeError(f"listener {self.name!r} is a TCP listener")

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.transport.serve_websocket(self, route, request)

        self.app.router.add_get(route.path, handler)

    def serve_tcp(self, route: TcpRoute) -> None:
        """This listener is a raw TCP server speaking ``route`` (spec ``transport="tcp"``)."""
        if self.app is not None:
            raise RuntimeError(f"listener {self.name!r} is an HTTP listener; set transport='tcp'")
        self.tcp_route = route

    async def infer(self, kind: EngineKind, call: Callable[..., R], *args: Any,
                    priority: Priority = Priority.LIVE, name: str | None = None,
                    timeout: float | None = None) -> R:
        """Run ``call(engine, *args)`` in the executor on the shared engine of ``kind``, tagged
        with the engine's name (so per-engine concurrency limits always apply)."""
        engine_name = self.hub.engine_name(kind, name)
        engine = await self.hub.engine(kind, name)
        return await self.executor.run(call, engine, *args, priority=priority, engine=engine_name,
                                       timeout=timeout)

    def service_info(self) -> dict[str, Any]:
        return self.hub.service_info()

    def observe_final_latency(self, seconds: float) -> None:
        self.metrics.final_latency.labels(protocol=self.name).observe(seconds)


# ----------------------------------------------------------------------------- transport


def map_failure(exc: BaseException, codes: ErrorCodes) -> ProtocolError:
    """Busy, closed and failed engines mean the same thing in every protocol."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, ExecutorBusy):
        return ProtocolError(codes.busy, "server busy: inference queue full, try again later",
                             status=503)
    if isinstance(exc, ExecutorClosed):
        return ProtocolError(codes.busy, "server shutting down", fatal=True,
                             close_code=CLOSE_GOING_AWAY, status=503)
    if isinstance(exc, ValueError | UnicodeError | TypeError | KeyError | OverflowError):
        return ProtocolError(codes.bad_message, f"bad message: {exc}"[:500])
    return ProtocolError(codes.internal, f"internal error: {exc.__class__.__name__}", fatal=True,
                         close_code=CLOSE_INTERNAL, status=500)


class _Live:
    """One open connection as the transport tracks it (for limits and graceful shutdown)."""

    __slots__ = ("channel", "peer", "receive_task")

    def __init__(self, channel: Channel, peer: str) -> None:
        self.channel = channel
        self.peer = peer
        self.receive_task: asyncio.Task | None = None


class Transport:
    """Accepts connections for every listener of one server and runs their receive loops."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.live: dict[str, set[_Live]] = {}
        self.stopping = False
        self._handlers: set[asyncio.Task] = set()

    # ---- limits

    def _over_limit(self, ctx: ProtocolContext, peer: str) -> str | None:
        limits = ctx.limits
        live = self.live.get(ctx.name, set())
        if limits.max_connections and len(live) >= limits.max_connections:
            return f"too many connections (limit {limits.max_connections})"
        # 127.0.0.1/::1 are exempt: behind a local reverse proxy (HAProxy, nginx) every client
        # comes from there, and the proxy is the place to limit per client.
        if limits.max_connections_per_peer and not _is_local_proxy(peer):
            same = sum(1 for item in live if item.peer == peer)
            if same >= limits.max_connections_per_peer:
                return f"too many connections from {peer} (limit {limits.max_connections_per_peer})"
        return None

    # ---- WebSocket

    async def serve_websocket(self, ctx: ProtocolContext, route: WebSocketRoute,
                              request: web.Request) -> web.StreamResponse:
        probe = web.WebSocketResponse(protocols=route.protocols)
        if not probe.can_prepare(request).ok:
            if route.http_get is not None:
                return await route.http_get(request)
            return web.json_response(
                {"protocol": ctx.name, "message": route.usage or "connect with a WebSocket client"},
                status=426, headers={"Upgrade": "websocket"})
        if self.stopping:
            raise web.HTTPServiceUnavailable(text="server shutting down")
        limits = ctx.limits
        ws = web.WebSocketResponse(max_msg_size=limits.max_message_bytes * 4,
                                   heartbeat=limits.heartbeat_s or None, protocols=route.protocols)
        if limits.heartbeat_s and limits.heartbeat_timeout_s:
            ws._pong_heartbeat = limits.heartbeat_timeout_s  # aiohttp has no public knob for it
        await ws.prepare(request)
        peer = request.remote or "?"
        channel = WebSocketChannel(ctx, route, peer, limits.max_outbox, ws)
        channel.credential = credential_of(request)
        await self._run_connection(ctx, route, channel, peer, request)
        return ws

    # ---- TCP

    async def serve_stream(self, ctx: ProtocolContext, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        route = ctx.tcp_route
        assert route is not None
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        channel = StreamChannel(ctx, route, peer, ctx.limits.max_outbox, writer)
        await self._run_connection(ctx, route, channel, peer, None, reader=reader)

    # ---- one connection, any transport

    async def _run_connection(self, ctx: ProtocolContext, route: WebSocketRoute | TcpRoute,
                              channel: Channel, peer: str, request: web.Request | None, *,
                              reader: asyncio.StreamReader | None = None) -> None:
        hub = self.hub
        counters = hub.counter(ctx.name)
        metrics = ctx.metrics
        live = _Live(channel, peer)
        refused = self._over_limit(ctx, peer)
        self.live.setdefault(ctx.name, set()).add(live)
        counters.connections_total += 1
        counters.connections_open += 1
        metrics.connections.labels(protocol=ctx.name).inc()
        metrics.connections_open.labels(protocol=ctx.name).inc()
        session: Session | None = None
        closed = False  # on_close already called
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        with structlog.contextvars.bound_contextvars(protocol=ctx.name, conn_id=channel.conn_id,
                                                     peer=peer):
            log.debug("connection_open")
            try:
                if refused:
                    channel.send_error(ProtocolError(route.codes.too_many_connections, refused,
                                                     fatal=True, close_code=CLOSE_TRY_AGAIN))
                    await channel.close(CLOSE_TRY_AGAIN, refused)
                    return
                try:
                    made = route.open_session(channel, request if request is not None else peer)
                    session = await made if asyncio.iscoroutine(made) else made  # type: ignore[assignment]
                    assert session is not None
                    await session.on_open()
                except Exception as exc:  # noqa: BLE001
                    self._report(channel, route, exc)
                    await channel.close(channel.close_code or CLOSE_INTERNAL, channel.close_reason)
                    return
                live.receive_task = asyncio.get_running_loop().create_task(
                    self._receive(ctx, route, channel, session, reader), name=f"recv-{channel.conn_id}")
                shutdown = False
                try:
                    await asyncio.shield(live.receive_task)
                except asyncio.CancelledError:
                    if live.receive_task.cancelled() and self.stopping:
                        shutdown = True
                    else:
                        live.receive_task.cancel()
                        channel.close_reason = "server shutdown"
                        raise
                if live.receive_task.cancelled():
                    shutdown = True
                if shutdown:
                    channel.close_reason = "server shutdown"
                    await self._close_session(session, CloseInfo("server shutdown", shutdown=True))
                    closed = True
                    await channel.close(CLOSE_GOING_AWAY, "server shutting down")
            finally:
                if session is not None and not closed:
                    code = channel.close_code or _ws_close_code(channel)
                    await self._close_session(session, CloseInfo(channel.close_reason, code=code))
                self.live.get(ctx.name, set()).discard(live)
                counters.connections_open -= 1
                metrics.connections_open.labels(protocol=ctx.name).dec()
                if task is not None:
                    self._handlers.discard(task)
                await channel._stop_writer()
                if not channel._transport_closed():
                    await channel._transport_close(channel.close_code or CLOSE_NORMAL, "")
                code = channel.close_code or _ws_close_code(channel)
                if channel.close_reason == "client closed" and code not in (None, CLOSE_NORMAL):
                    channel.close_reason = f"closed ({code})"
                self._summary(ctx, channel, session, code)

    @staticmethod
    async def _close_session(session: Session, info: CloseInfo) -> None:
        try:
            await session.on_close(info)
        except Exception:  # noqa: BLE001
            log.exception("session_close_failed")

    def _summary(self, ctx: ProtocolContext, channel: Channel, session: Session | None,
                 code: int | None) -> None:
        audio = float(getattr(session, "audio_seconds", 0.0) or 0.0)
        processing = float(getattr(session, "processing_seconds", 0.0) or 0.0)
        extra: dict[str, Any] = {}
        if session is not None:
            try:
                extra = dict(session.summary())
            except Exception:  # noqa: BLE001
                log.exception("session_summary_failed")
        metrics = ctx.metrics
        metrics.audio_seconds.labels(protocol=ctx.name).inc(audio)
        if audio:
            metrics.rtf.labels(protocol=ctx.name).observe(processing / audio)
        rtf = processing / audio if audio else None
        summary = {"protocol": ctx.name, "conn_id": channel.conn_id, "peer": channel.peer,
                   "duration_s": round(time.monotonic() - channel.opened, 3),
                   "audio_s": round(audio, 3), "processing_s": round(processing, 3),
                   "rtf": round(rtf, 4) if rtf is not None else None,
                   "close_reason": channel.close_reason, "close_code": code,
                   "errors": channel.errors_sent, **extra}
        self.hub.session_closed(summary)

    def _report(self, channel: Channel, route: WebSocketRoute | TcpRoute, exc: BaseException) -> None:
        err = map_failure(exc, route.codes)
        if err.code == route.codes.internal and not isinstance(exc, ProtocolError):
            log.error("session_failed", error=repr(exc), exc_info=exc)
            channel.close_reason = f"server error: {exc.__class__.__name__}"
        channel.send_error(err)

    async def _receive(self, ctx: ProtocolContext, route: WebSocketRoute | TcpRoute,
                       channel: Channel, session: Session,
                       reader: asyncio.StreamReader | None) -> None:
        limit = ctx.limits.max_message_bytes
        codes = route.codes
        if isinstance(channel, WebSocketChannel):
            ws = channel.ws
            async for msg in ws:
                try:
                    if msg.type == WSMsgType.TEXT:
                        if len(msg.data) > limit:
                            raise ProtocolError(codes.too_big, f"message of {len(msg.data)} bytes "
                                                f"is over the limit of {limit}")
                        await session.on_text(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        if len(msg.data) > limit:
                            raise ProtocolError(codes.too_big, f"message of {len(msg.data)} bytes "
                                                f"is over the limit of {limit}")
                        await session.on_binary(msg.data)
                    elif msg.type == WSMsgType.ERROR:
                        exc = ws.exception()
                        channel.close_reason = f"socket error: {exc}"
                        if "too big" in str(exc).lower() or "Message size" in str(exc):
                            channel.close_code = CLOSE_TOO_BIG
                        break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    self._report(channel, route, exc)
                if channel.closed:
                    break
            return
        assert reader is not None and isinstance(route, TcpRoute)
        while not channel.closed:
            try:
                message = await route.read_message(reader, limit)
            except asyncio.IncompleteReadError:
                return
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001
                err = map_failure(exc, codes)
                if not err.fatal:  # a framing error leaves the stream unreadable
                    err = ProtocolError(err.code, err.message, fatal=True)
                log.info("bad_frame", error=err.message)
                self._report(channel, route, err)
                return
            if message is None:
                return
            try:
                await session.on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._report(channel, route, exc)

    # ---- shutdown

    async def shutdown(self, timeout: float) -> None:
        """Stop reading every connection; each session flushes finals, then 1001."""
        self.stopping = True
        for conns in self.live.values():
            for item in list(conns):
                if item.receive_task is not None and not item.receive_task.done():
                    item.receive_task.cancel()
        pending = [t for t in self._handlers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)


def _is_local_proxy(peer: str) -> bool:
    """127.0.0.1 and ::1: where a reverse proxy on the same host connects from."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer in ("", "?")
    return address in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def _ws_close_code(channel: Channel) -> int | None:
    ws = getattr(channel, "ws", None)
    return ws.close_code if ws is not None else None

__all__ = [
    "CloseInfo", "Channel", "ErrorCodes", "ListenerSettings", "ProtocolContext", "ProtocolError",
    "Session", "TcpRoute", "Transport", "WebSocketRoute", "dumps", "loads", "map_failure",
]
