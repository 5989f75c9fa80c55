"""aiohttp glue for ``/ws/asr/{session_id}?mode=sender|receiver``: parse, hand to the session,
map errors to ``{"type": "error"}`` messages and close codes."""

from __future__ import annotations

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from asrhub.config import ConfigError
from asrhub.connection import Connection, websocket_connection
from asrhub.engine import SAMPLE_RATE, EngineError
from asrhub.executor import InferenceExecutor
from asrhub.hub import Hub

from .messages import (
    EndOfAudio,
    ErrorCode,
    Mode,
    ProtocolError,
    error_message,
    parse_mode,
    parse_sender_audio,
    parse_sender_text,
    parse_session_id,
)
from .pipeline import Engines
from .session import BroadcastSession, SessionRegistry
from .settings import BroadcastSettings

PROTOCOL = "session_broadcast"
log = structlog.get_logger("asrhub.session_broadcast")
REGISTRY_KEY: web.AppKey[SessionRegistry] = web.AppKey("session_broadcast_registry")

# Close codes: refusals are policy violations (the client can fix them); load is 1013.
TRY_AGAIN_LATER = 1013
# Invalid audio/text messages a sender may send before it is closed (1007).
MAX_BAD_MESSAGES = 20
REFUSAL_CODES = {
    ErrorCode.TOO_MANY_SESSIONS: TRY_AGAIN_LATER,
    ErrorCode.TOO_MANY_RECEIVERS: TRY_AGAIN_LATER,
    ErrorCode.SERVER_BUSY: TRY_AGAIN_LATER,
}


async def load_engines(hub: Hub, settings: BroadcastSettings) -> Engines:
    """The shared engines a sender's session needs (loaded once per process). Without a usable
    speaker engine or voiceprint store the session still runs; every speaker is unknown."""
    vad = await hub.vad()
    asr = await hub.asr()
    speaker = voiceprints = None
    if settings.identify_speakers:
        try:
            speaker = await hub.speaker()
            if speaker is not None:
                voiceprints = await hub.voiceprints()
        except (EngineError, ConfigError) as exc:
            log.warning("speaker_identification_unavailable", error=str(exc))
            speaker = voiceprints = None
    return Engines(vad=vad, asr=asr, speaker=speaker, voiceprints=voiceprints)


def setup_routes(app: web.Application, hub: Hub, settings: BroadcastSettings) -> None:
    registry = SessionRegistry(
        settings,
        load_engines=lambda: load_engines(hub, settings),
        executor=lambda: _executor(hub),
        on_error=lambda code: hub.count_error(PROTOCOL, str(code)),
    )
    app[REGISTRY_KEY] = registry

    async def stop_sessions(app: web.Application) -> None:
        await registry.shutdown()

    app.on_shutdown.append(stop_sessions)

    async def ws_asr(request: web.Request) -> web.StreamResponse:
        async with websocket_connection(
                request, PROTOCOL, max_msg_size=settings.max_message_bytes,
                heartbeat=settings.heartbeat_s or None, max_outbox=settings.client_queue,
                max_connections=settings.max_connections) as conn:
            try:
                if getattr(conn, "over_limit", False):
                    raise ProtocolError(ErrorCode.SERVER_BUSY, "too many connections: try again later")
                session_id = parse_session_id(request.match_info.get("session_id", ""))
                mode = parse_mode(request.query.get("mode"))
                conn.summary_extra.update(session_id=session_id, mode=str(mode))
                session = registry.get_or_create(session_id)
                if mode is Mode.RECEIVER:
                    session.add_receiver(conn)
                else:
                    session.attach_sender(conn)
            except ProtocolError as exc:
                await refuse(conn, exc)
                return conn.ws
            if mode is Mode.RECEIVER:
                await serve_receiver(conn, session)
            else:
                await serve_sender(conn, session)
        return conn.ws

    app.router.add_get("/ws/asr/{session_id}", ws_asr)
    # An empty session id (a blank form field) gets a clear refusal rather than a bare 404.
    app.router.add_get("/ws/asr/", ws_asr)
    app.router.add_get("/ws/asr", ws_asr)


def _executor(hub: Hub) -> InferenceExecutor:
    assert hub.executor is not None, "the server starts the executor before any connection"
    return hub.executor


async def refuse(conn: Connection, exc: ProtocolError) -> None:
    conn.hub.count_error(PROTOCOL, str(exc.code))
    conn.send_json(error_message(exc.code, exc.message))
    await conn.close(REFUSAL_CODES.get(exc.code, WSCloseCode.POLICY_VIOLATION),
                     close_reason(exc.message))


def close_reason(text: str) -> str:
    """At most 120 bytes of UTF-8, cut between characters (a close reason may hold 123, and a
    reason cut inside a character is invalid UTF-8, which clients treat as a protocol error)."""
    return text.encode()[:120].decode(errors="ignore")


def report(conn: Connection, exc: ProtocolError) -> None:
    conn.hub.count_error(PROTOCOL, str(exc.code))
    conn.send_json(error_message(exc.code, exc.message))


async def serve_receiver(conn: Connection, session: BroadcastSession) -> None:
    """A receiver only listens; whatever it sends is answered with an error and ignored."""
    warned = False
    try:
        async for msg in conn.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not warned:
                warned = True
                report(conn, ProtocolError(ErrorCode.RECEIVER_SENT_DATA,
                                           "receivers only receive results; messages from a "
                                           "receiver are ignored"))
    finally:
        session.remove_receiver(conn)


async def serve_sender(conn: Connection, session: BroadcastSession) -> None:
    end = "sender disconnected"  # a closed browser tab sends no "close"
    bad = 0
    try:
        async for msg in conn.ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                break  # ERROR (CLOSE and CLOSING end the iteration)
            try:
                if msg.type == WSMsgType.TEXT:
                    if isinstance(parse_sender_text(msg.data), EndOfAudio):
                        end = "sender sent close"
                        break
                    continue
                frame = parse_sender_audio(msg.data)
                session.feed(frame.pcm)
                conn.audio_seconds += len(frame.pcm) / SAMPLE_RATE
            except ProtocolError as exc:
                report(conn, exc)
                if exc.code in (ErrorCode.BACKLOG_FULL, ErrorCode.SESSION_CLOSED):
                    # no more audio is taken: what was accepted is still recognised
                    end = "backlog full" if exc.code is ErrorCode.BACKLOG_FULL else "server error"
                    break
                bad += 1
                if bad >= MAX_BAD_MESSAGES:
                    # A client sending the wrong format gets one clear close, not an error
                    # per frame forever. What it sent before still reaches the receivers.
                    end = "too many invalid messages"
                    await conn.close(WSCloseCode.INVALID_TEXT,
                                     f"{MAX_BAD_MESSAGES} invalid messages ({exc.code}): expected "
                                     'float32 PCM, 16 kHz, mono, and text "close"')
                    break
    finally:
        session.end_of_audio(end)
    if not conn.closed:
        # The session sends the remaining results, then the acknowledgement, then closes us.
        await session.wait_closed()
        conn.close_reason = "session closed"
    conn.processing_seconds = session.processing_seconds
    conn.summary_extra.update(results=session.results, segments=session.segments,
                              receivers_peak=session.receivers_peak, end=end)
