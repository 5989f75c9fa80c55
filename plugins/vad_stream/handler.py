"""aiohttp glue: the WebSocket on :9200 and the static HTTP service on :9201."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from asrhub.appkeys import HUB_KEY
from asrhub.connection import websocket_connection
from asrhub.paths import web_dir

from . import messages as msg
from .session import Services, VadStreamSession
from .settings import VadStreamSettings

log = structlog.get_logger("asrhub.vad_stream")

PROTOCOL = "vad_stream"


def make_ws_handler(settings: VadStreamSettings):
    async def ws_handler(request: web.Request) -> web.StreamResponse:
        if not web.WebSocketResponse().can_prepare(request).ok:
            info = request.app[HUB_KEY].service_info()
            return web.json_response({"protocol": PROTOCOL, "message": "connect with a WebSocket "
                                      "client: binary PCM int16 LE 16 kHz mono and JSON commands",
                                      **info}, status=426, headers={"Upgrade": "websocket"})
        hub = request.app[HUB_KEY]
        async with websocket_connection(
                request, PROTOCOL, max_msg_size=settings.max_message_bytes,
                heartbeat=settings.ping_interval_s, max_outbox=settings.max_outbox,
                max_connections=settings.max_connections) as conn:
            if getattr(conn, "over_limit", False):
                conn.send_json(msg.error(msg.ErrorCode.PROCESSING,
                                         f"too many connections (limit {settings.max_connections})"))
                hub.count_error(PROTOCOL, int(msg.ErrorCode.PROCESSING))
                await conn.close(WSCloseCode.TRY_AGAIN_LATER, "too many connections")
                return conn.ws

            def send(message: dict[str, Any]) -> None:
                if message.get("type") == "error":
                    hub.count_error(PROTOCOL, message["code"])
                conn.send_json(message)

            session = VadStreamSession(settings, Services.from_hub(hub, settings), send)
            await session.start()
            try:
                async for message in conn.ws:
                    if message.type == WSMsgType.BINARY:
                        await session.on_binary(message.data)
                    elif message.type == WSMsgType.TEXT:
                        await session.on_text(message.data)
                    elif message.type == WSMsgType.ERROR:
                        conn.close_reason = f"websocket error: {conn.ws.exception()}"
                        break
                    if conn.closed:
                        break
            finally:
                await session.close()
                conn.audio_seconds = session.audio_seconds
                conn.processing_seconds = session.processing_seconds
                conn.summary_extra.update(dict(session.stats))
        return conn.ws

    return ws_handler


# ----------------------------------------------------------------------------- static HTTP


def static_root(settings: VadStreamSettings) -> Path:
    return Path(settings.web_dir).expanduser() if settings.web_dir else web_dir()


def make_static_handler(root: Path):
    async def static_handler(request: web.Request) -> web.StreamResponse:
        base = root.resolve()
        relative = request.match_info.get("path", "")
        try:
            target = (base / relative).resolve()
        except (OSError, ValueError):
            raise web.HTTPNotFound() from None
        if target != base and base not in target.parents:  # ../ or a link out of the folder
            raise web.HTTPForbidden(text="Forbidden")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            raise web.HTTPNotFound(text="File not found")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return web.FileResponse(target, headers={"Content-Type": content_type,
                                                 "Cache-Control": "no-cache"})

    return static_handler


def setup_static(app: web.Application, root: Path) -> None:
    # aiohttp resolves plain paths before this catch-all, so the routes the core adds after
    # setup (/health, /metrics, /services: the demo page reads /services) keep working here.
    app.router.add_get("/{path:.*}", make_static_handler(root))
