"""The adapter: the WebSocket on :9200 (the core's transport, the seed's error envelope and
codes) and the static HTTP service on :9201."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

from asrhub.appkeys import PUBLIC_PREFIXES_KEY
from asrhub.paths import web_dir
from asrhub.protocol import Channel, ProtocolContext, WebSocketRoute

from .messages import CODES, error_message
from .session import RegistrationLimiter, VadStreamSession
from .settings import VadStreamSettings

PROTOCOL = "vad_stream"


def route(ctx: ProtocolContext) -> WebSocketRoute:
    limiter = RegistrationLimiter(ctx.settings.speaker_registrations_per_minute)

    def open_session(channel: Channel, request: Any) -> VadStreamSession:
        return VadStreamSession(channel, ctx, ctx.settings, limiter)  # the settings of now (SIGHUP)

    async def usage(request: web.Request) -> web.Response:
        return web.json_response({"protocol": PROTOCOL, "message": "connect with a WebSocket "
                                  "client: binary PCM int16 LE 16 kHz mono and JSON commands",
                                  **ctx.service_info()}, status=426, headers={"Upgrade": "websocket"})

    return WebSocketRoute("/", open_session, error_message, CODES, http_get=usage)


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
    # With a token set, the page's files load without it (the page then asks for the token and
    # sends it on every connection); "/" itself, /metrics and /services still need it.
    if root.is_dir():
        app[PUBLIC_PREFIXES_KEY] = tuple(sorted(f"/{entry.name}{'/' if entry.is_dir() else ''}"
                                                for entry in root.iterdir()
                                                if not entry.name.startswith((".", "_"))))
