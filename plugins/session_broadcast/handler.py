"""The adapter: ``/ws/asr/{session_id}?mode=sender|receiver`` on the core's transport, with
our error envelope and codes. Parsing the path and query, joining the session and refusing
(with the error, then 1008 or 1013) happen when the core opens the connection; with
``[cluster] redis_url`` joining may ask Redis (the sender lock, a subscription)."""

from __future__ import annotations

from aiohttp import web

from asrhub.protocol import Channel, ProtocolContext, Session, WebSocketRoute

from .fanout import Bus
from .messages import CODES, Mode, error_message, parse_mode, parse_session_id
from .session import ReceiverConnection, SenderConnection, SessionRegistry

PROTOCOL = "session_broadcast"
REGISTRY_KEY: web.AppKey[SessionRegistry] = web.AppKey("session_broadcast_registry")
PATHS = ("/ws/asr/{session_id}", "/ws/asr/", "/ws/asr")  # empty ids get a clear refusal, not 404


def setup_routes(ctx: ProtocolContext) -> None:
    assert ctx.app is not None
    # [cluster] redis_url: results fan out through Redis to receivers on every instance.
    bus = Bus(ctx.hub.cluster) if ctx.hub.cluster is not None else None
    registry = SessionRegistry(ctx, bus)
    ctx.app[REGISTRY_KEY] = registry

    async def open_session(channel: Channel, request: web.Request) -> Session:
        session_id = parse_session_id(request.match_info.get("session_id", ""))
        mode = parse_mode(request.query.get("mode"))
        if mode is Mode.RECEIVER:
            return ReceiverConnection(channel, await registry.join_receiver(session_id, channel))
        return SenderConnection(channel, await registry.join_sender(session_id, channel))

    async def stop_sessions(app: web.Application) -> None:  # whatever the core's drain left
        await registry.shutdown()

    ctx.app.on_shutdown.append(stop_sessions)
    for path in PATHS:
        ctx.websocket(WebSocketRoute(path, open_session, error_message, CODES,
                                     usage="connect with a WebSocket client: "
                                           "/ws/asr/{session_id}?mode=sender|receiver"))
