"""The adapter: ``/ws/asr/{session_id}?mode=sender|receiver`` on the core's transport, with
our error envelope and codes. Parsing the path and query, joining the session and refusing
(with the error, then 1008 or 1013) happen when the core opens the connection."""

from __future__ import annotations

from aiohttp import web

from asrhub.protocol import Channel, ProtocolContext, Session, WebSocketRoute

from .messages import CODES, Mode, error_message, parse_mode, parse_session_id
from .session import ReceiverConnection, SenderConnection, SessionRegistry

PROTOCOL = "session_broadcast"
REGISTRY_KEY: web.AppKey[SessionRegistry] = web.AppKey("session_broadcast_registry")
PATHS = ("/ws/asr/{session_id}", "/ws/asr/", "/ws/asr")  # empty ids get a clear refusal, not 404


def setup_routes(ctx: ProtocolContext) -> None:
    assert ctx.app is not None
    registry = SessionRegistry(ctx)
    ctx.app[REGISTRY_KEY] = registry

    def open_session(channel: Channel, request: web.Request) -> Session:
        session_id = parse_session_id(request.match_info.get("session_id", ""))
        mode = parse_mode(request.query.get("mode"))
        session = registry.get_or_create(session_id)
        if mode is Mode.RECEIVER:
            session.add_receiver(channel)
            return ReceiverConnection(channel, session)
        registry.attach_sender(session, channel)
        return SenderConnection(channel, session)

    async def stop_sessions(app: web.Application) -> None:  # whatever the core's drain left
        await registry.shutdown()

    ctx.app.on_shutdown.append(stop_sessions)
    for path in PATHS:
        ctx.websocket(WebSocketRoute(path, open_session, error_message, CODES,
                                     usage="connect with a WebSocket client: "
                                           "/ws/asr/{session_id}?mode=sender|receiver"))
