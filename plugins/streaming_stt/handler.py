"""aiohttp glue for the streaming STT protocol: one WebSocket at ``/``, messages to the session."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from asrhub.appkeys import HUB_KEY
from asrhub.connection import websocket_connection
from asrhub.engine import ASRStream
from asrhub.executor import Priority
from asrhub.hub import Hub

from . import messages as m
from .session import StreamingSession
from .settings import StreamingSTTSettings

PROTOCOL = "streaming_stt"


def make_stream_opener(hub: Hub):
    """Open a recognition stream: the shared ASR engine, segmented by the shared VAD engine."""

    async def open_stream(language: str | None) -> ASRStream:
        asr = await hub.asr()
        vad = await hub.vad()

        def build() -> ASRStream:
            return asr.open_stream(language=language, vad=vad.open_stream() if vad is not None else None)

        return await hub.executor.run(build, priority=Priority.LIVE)

    return open_stream


def setup(app: web.Application, hub: Hub, settings: StreamingSTTSettings) -> None:
    # Import FFmpeg's bindings now, not in the first webm session's decoder thread: an import
    # holds the GIL for ~0.1 s, which would stall the event loop of every session.
    import av  # noqa: F401

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response({
                "service": "asrhub streaming_stt", "mode": "streaming",
                "usage": "connect a WebSocket here; send {\"command\": \"start\"}, binary audio "
                         "(PCM int16 LE 16 kHz mono, or webm/ogg), then {\"command\": \"stop\"}",
            })
        hub_ = request.app[HUB_KEY]
        async with websocket_connection(
            request, PROTOCOL, max_msg_size=settings.max_message_bytes,
            heartbeat=settings.heartbeat_s or None, max_connections=settings.max_connections,
        ) as conn:
            if getattr(conn, "over_limit", False):
                hub_.count_error(PROTOCOL, m.TOO_MANY_CONNECTIONS)
                conn.send_json(m.error(m.TOO_MANY_CONNECTIONS, "too many connections; try again later"))
                await conn.close(aiohttp.WSCloseCode.TRY_AGAIN_LATER, "too many connections")
                return conn.ws
            metrics = hub_.metrics
            session = StreamingSession(
                send=conn.send_json,
                open_stream=make_stream_opener(hub_),
                executor=hub_.executor,
                settings=settings,
                engine=hub_.engine_name("asr"),
                count_error=lambda code: hub_.count_error(PROTOCOL, code),
                observe_final_latency=(metrics.final_latency.labels(protocol=PROTOCOL).observe
                                       if metrics is not None else None),
            )
            conn.send_json(m.connected())
            try:
                async for msg in conn.ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        await session.on_binary(msg.data)
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        await session.on_text(msg.data)
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        conn.close_reason = f"socket error: {conn.ws.exception()}"
                        break
            finally:
                await session.close()
                conn.audio_seconds = session.audio_seconds
                conn.processing_seconds = session.processing_seconds
                conn.summary_extra.update(sessions=session.sessions, partials=session.partials_sent,
                                          errors=session.errors_sent, format=session.input_format)
                if metrics is not None and session.sessions:
                    metrics.sessions.labels(protocol=PROTOCOL).inc(session.sessions)
        return conn.ws

    app.router.add_get("/", handle)
