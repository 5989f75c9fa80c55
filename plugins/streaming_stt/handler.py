"""The streaming STT adapter onto the protocol kit: one WebSocket at ``/`` (the protocol is
:mod:`.session`, its wire format :mod:`.messages`); a plain GET there describes the endpoint."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from asrhub.protocol import Channel, ProtocolContext, WebSocketRoute
from asrhub.streaming import LiveRecognizer

from . import messages as m
from .session import StreamingSession

USAGE = ("connect a WebSocket here; send {\"command\": \"start\"}, binary audio (PCM int16 LE "
         "16 kHz mono, or webm/ogg), then {\"command\": \"stop\"}")


def setup(ctx: ProtocolContext) -> None:
    # Import FFmpeg's bindings now, not in the first webm session's decoder thread: an import
    # holds the GIL for ~0.1 s, which would stall the event loop of every session.
    import av  # noqa: F401

    # The shared ASR engine, its streams segmented by the shared VAD engine; every executor
    # call tagged with the ASR engine.
    recognizer = LiveRecognizer.for_hub(ctx.hub)

    def open_session(channel: Channel, request: Any) -> StreamingSession:
        return StreamingSession(channel, recognizer, ctx.settings,
                                observe_final_latency=ctx.observe_final_latency)

    async def describe(request: web.Request) -> web.Response:
        return web.json_response({"service": "asrhub streaming_stt", "mode": "streaming",
                                  "usage": USAGE})

    ctx.websocket(WebSocketRoute(path="/", open_session=open_session,
                                 error_message=m.error_message, codes=m.CODES,
                                 http_get=describe, usage=USAGE))
