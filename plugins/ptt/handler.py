"""aiohttp glue of the PTT listener: the WebSocket ``/ws/asr`` and the HTTP pages ``/``,
``/stats`` and ``/test`` (``/health`` and ``/metrics`` are the core's). The protocol itself is
in :mod:`.session`."""

from __future__ import annotations

import asyncio
import dataclasses

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from asrhub.appkeys import HUB_KEY
from asrhub.connection import Connection, websocket_connection
from asrhub.hub import Hub, ProtocolCounters
from asrhub.paths import web_dir

from . import messages as m
from .session import PTTSession
from .settings import PTTSettings
from .stats import PTTStats

log = structlog.get_logger("asrhub.ptt")

PROTOCOL = "ptt"
WS_PATH = "/ws/asr"
SETTINGS_KEY: web.AppKey[PTTSettings] = web.AppKey("ptt_settings")
STATS_KEY: web.AppKey[PTTStats] = web.AppKey("ptt_stats")


def setup_routes(app: web.Application, hub: Hub, settings: PTTSettings) -> None:
    app[SETTINGS_KEY] = settings
    app[STATS_KEY] = PTTStats()
    app.router.add_get(WS_PATH, websocket_handler)
    app.router.add_get("/", index_handler)
    app.router.add_get("/stats", stats_handler)
    # The shared demo page (web/), opened on this protocol; its assets live under /test/.
    app.router.add_get("/test", test_page_redirect)
    app.router.add_get("/test/", test_page_handler)
    app.router.add_static("/test/", web_dir())


# ---------------------------------------------------------------------------- WebSocket


def _open_stream_factory(hub: Hub, settings: PTTSettings):
    """A blocking factory (run in the executor): the shared engines, a fresh stream."""

    def open_stream():
        asr = hub.engine_sync("asr")
        vad_stream = None
        if settings.vad:
            vad = hub.engine_sync("vad")
            vad_stream = vad.open_stream() if vad is not None else None
        return asr.open_stream(language=settings.language or None, vad=vad_stream)

    return open_stream


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    settings = request.app[SETTINGS_KEY]
    stats = request.app[STATS_KEY]
    async with websocket_connection(
        request, PROTOCOL,
        # Over max_message_bytes a frame gets 413 and the connection lives on; only frames
        # over twice that are cut off by the transport (close 1009).
        max_msg_size=2 * settings.max_message_bytes,
        heartbeat=settings.heartbeat_s or None,
        max_outbox=settings.max_outbox,
        max_connections=settings.max_connections,
    ) as conn:
        if getattr(conn, "over_limit", False):
            stats.connections_rejected += 1
            stats.errors[m.BUSY] += 1
            hub.count_error(PROTOCOL, m.BUSY)
            conn.send_json(m.error(m.BUSY, f"too many connections (at most "
                                           f"{settings.max_connections}); try again later"))
            await conn.close(WSCloseCode.TRY_AGAIN_LATER, "too many connections")
            return conn.ws

        def on_final(seconds: float) -> None:
            if hub.metrics is not None:
                hub.metrics.final_latency.labels(protocol=PROTOCOL).observe(seconds)

        session = PTTSession(
            send=conn.send_json,
            open_stream=_open_stream_factory(hub, settings),
            executor=hub.executor,
            settings=settings,
            engine=hub.engine_name("asr"),
            stats=stats,
            on_error=lambda code: hub.count_error(PROTOCOL, code),
            on_final=on_final,
        )
        conn.send_json(m.status("connected", session_id=conn.conn_id))
        try:
            await _receive_loop(conn, session, settings)
        finally:
            await session.close()
            conn.audio_seconds = session.audio_seconds
            conn.processing_seconds = session.processing_seconds
            conn.summary_extra["utterances"] = session.utterances
    return conn.ws


async def _receive_loop(conn: Connection, session: PTTSession, settings: PTTSettings) -> None:
    ws = conn.ws
    loop = asyncio.get_running_loop()
    idle = settings.idle_timeout_s
    last_message = loop.time()
    while not conn.closed:
        try:
            # Our own deadline: receive(timeout=) restarts at every ping and pong, so a client
            # answering heartbeats would never be idle.
            async with asyncio.timeout_at(last_message + idle if idle else None):
                msg = await ws.receive()
        except TimeoutError:
            session.refuse(m.IDLE_TIMEOUT, f"nothing received for {settings.idle_timeout_s:g} s: "
                                           "closing the connection")
            await conn.close(WSCloseCode.OK, "idle timeout")
            return
        last_message = loop.time()
        if msg.type == WSMsgType.TEXT:
            if len(msg.data) > settings.max_message_bytes:
                session.refuse(m.TOO_LARGE, f"message of {len(msg.data)} bytes is over the limit "
                                            f"of {settings.max_message_bytes}: send shorter "
                                            "audio chunks")
                continue
            await session.handle(msg.data)
        elif msg.type == WSMsgType.BINARY:
            session.refuse(m.BAD_REQUEST, "binary frames are not part of this protocol: send "
                                          'JSON text {"type": "audio", "data": "<base64 PCM>"}')
        elif msg.type == WSMsgType.ERROR:
            conn.close_reason = f"websocket error: {ws.exception()!r}"
            return
        else:  # CLOSE, CLOSING, CLOSED
            return


# ---------------------------------------------------------------------------- HTTP


async def index_handler(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    info = hub.service_info()
    if info.get("model") is None:  # not loaded yet: say what will be
        try:
            settings = hub.settings_for("asr", hub.engine_name("asr"))
            info["model"] = getattr(settings, "model", None)
        except Exception:  # noqa: BLE001 - informative only
            pass
    ok, why = hub.health()
    info.update({"protocol": PROTOCOL, "websocket": WS_PATH, "status": "ok" if ok else why,
                 "audio": {"sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le",
                           "transport": "base64 in JSON"},
                 "endpoints": {"websocket": WS_PATH, "health": "/health", "stats": "/stats",
                               "test": "/test", "metrics": "/metrics"}})
    return web.json_response(info)


async def stats_handler(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    stats = request.app[STATS_KEY]
    counters = hub.counters.get(PROTOCOL) or ProtocolCounters()
    body = stats.snapshot()
    executor = dataclasses.asdict(hub.executor.stats()) if hub.executor is not None else None
    lag = getattr(hub, "loop_lag", None)
    body.update({
        "protocol": PROTOCOL,
        "uptime_s": round(hub.uptime(), 1),
        "connections": {"open": counters.connections_open, "total": counters.connections_total,
                        "rejected": stats.connections_rejected},
        "sessions": body.pop("utterances"),
        "queue_depth": executor["queue_depth"] if executor else 0,
        "executor": executor,
        "event_loop_lag_ms": lag.summary_ms() if lag is not None else None,
    })
    return web.json_response(body)


async def test_page_redirect(request: web.Request) -> web.Response:
    query = request.query_string or "protocol=ptt"
    raise web.HTTPFound(f"/test/?{query}")


async def test_page_handler(request: web.Request) -> web.FileResponse:
    return web.FileResponse(web_dir() / "index.html")
