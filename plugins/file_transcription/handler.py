"""aiohttp glue for the file-transcription protocol: one WebSocket route at "/".

Prepare the socket (the seed's 10 MB message limit, 60 s heartbeat), hand every text frame to
the connection's :class:`~.session.FileSession`, clean up in ``finally``. The
:class:`~.service.FileService` (queue, store) is started and stopped with the application.
"""

from __future__ import annotations

from aiohttp import WSCloseCode, WSMsgType, web

from asrhub.appkeys import HUB_KEY
from asrhub.connection import websocket_connection

from . import messages as m
from .media import SUPPORTED_EXTENSIONS
from .service import PROTOCOL, FileService
from .session import FileSession
from .settings import FileTranscriptionSettings

SERVICE_KEY: web.AppKey[FileService] = web.AppKey("file_transcription_service", FileService)


def setup_app(app: web.Application, settings: FileTranscriptionSettings) -> None:
    service = FileService(app[HUB_KEY], settings)
    app[SERVICE_KEY] = service

    async def start(app: web.Application) -> None:
        await service.start()

    async def stop(app: web.Application) -> None:
        await service.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/", websocket_handler)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    settings = service.settings
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.json_response({"protocol": PROTOCOL, "transport": "websocket",
                                  "supported_formats": list(SUPPORTED_EXTENSIONS),
                                  "max_file_size": settings.max_file_bytes})
    async with websocket_connection(request, PROTOCOL, max_msg_size=settings.max_message_bytes,
                                    heartbeat=settings.heartbeat,
                                    max_connections=settings.max_connections) as conn:
        session = FileSession(service, conn.send_json)
        if getattr(conn, "over_limit", False):
            session.report(m.ProtocolError(m.SERVER_BUSY, "too many connections; try again later"))
            await conn.close(code=WSCloseCode.TRY_AGAIN_LATER, reason="too many connections")
            return conn.ws
        session.welcome()
        try:
            async for msg in conn.ws:
                if msg.type == WSMsgType.TEXT:
                    await session.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    session.report(m.ProtocolError(m.INVALID_MESSAGE, "binary frames are not part of "
                                                   "this protocol: send JSON text messages"))
                elif msg.type == WSMsgType.ERROR:
                    conn.close_reason = f"error: {conn.ws.exception()}"
                    break
        finally:
            session.close()
            conn.audio_seconds = session.audio_seconds
            conn.processing_seconds = session.processing_seconds
            conn.summary_extra.update(session.summary())
    return conn.ws
