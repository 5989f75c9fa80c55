"""The file-transcription protocol on the kit: one WebSocket route at "/".

The core (asrhub.protocol) owns the socket: limits, heartbeat, the receive loop, error
counting, the summary line. This adapter names the route, the seed's error envelope
(``{"type": "error", "data": {"error": code, "message": text, ...}}``) and codes, builds a
:class:`~.session.FileSession` per connection with its trust scope and quota key, and starts
and stops the :class:`~.service.FileService` (queue, store) with the application.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import structlog
from aiohttp import web

from asrhub.protocol import Channel, ProtocolContext, ProtocolError, WebSocketRoute

from . import messages as m
from .media import SUPPORTED_EXTENSIONS
from .service import PROTOCOL, FileService
from .session import FileSession
from .settings import FileTranscriptionSettings

log = structlog.get_logger("asrhub.file_transcription")
SERVICE_KEY: web.AppKey[FileService] = web.AppKey("file_transcription_service", FileService)


def offered_token(request: web.Request) -> str:
    """The token the client sent (Bearer header, X-Asrhub-Token, ?token=), as the core reads it."""
    offered = request.query.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        offered = auth[7:].strip() or offered
    return request.headers.get("X-Asrhub-Token", "").strip() or offered


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:24] if token else ""


def identity(settings: FileTranscriptionSettings, auth_on: bool, token: str,
             peer: str) -> tuple[str, str, bool]:
    """(trust scope, quota key, MD5 shortcut allowed) of a connection.

    The scope decides which tasks and MD5-cached results a client may see (``cache_scope``);
    the quota key is the peer address, within the token when the listener checks one (an
    unchecked token would let a client pick a fresh quota per upload)."""
    mode = settings.cache_scope
    if mode == "auto":
        mode = "token" if auth_on else "shared"
    scope = {"token": f"token:{_token_id(token)}", "peer": f"peer:{peer}"}.get(mode, "")
    client = f"{_token_id(token)}@{peer}" if auth_on else peer
    return scope, client, mode != "none"


def error_envelope(err: ProtocolError) -> dict[str, Any]:
    log.info("file_request_refused", error=err.code, reason=err.message)
    return m.error(str(err.code), err.message, **err.extra)


def make_service(hub: Any, settings: FileTranscriptionSettings) -> FileService:
    """The single box's service (SQLite + own spool), or with ``[cluster] redis_url`` and
    ``shared_spool_dir`` set the cluster's (Redis + shared spool)."""
    if hub.cluster is not None and settings.shared_spool_dir:
        from .cluster import ClusterFileService

        log.info("file_cluster_mode", spool=settings.shared_spool_dir,
                 instance=hub.cluster.instance_id, concurrency=settings.concurrency)
        return ClusterFileService(hub, settings)
    if hub.cluster is not None:
        log.warning("file_tasks_not_shared", reason="[cluster] redis_url is set but "
                    "[protocols.file_transcription] shared_spool_dir is not: file tasks, uploads "
                    "and results stay in this instance")
    if settings.concurrency < 1:
        log.warning("file_concurrency_zero", reason="concurrency = 0 only makes sense in a "
                    "cluster (another instance transcribes); this instance uses 1")
        settings = dataclasses.replace(settings, concurrency=1)
    return FileService(hub, settings)


def setup(ctx: ProtocolContext) -> None:
    settings: FileTranscriptionSettings = ctx.settings
    assert ctx.app is not None
    service = make_service(ctx.hub, settings)
    ctx.app[SERVICE_KEY] = service
    auth_on = bool(ctx.listener.token)

    async def start(app: web.Application) -> None:
        await service.start()

    async def stop(app: web.Application) -> None:
        await service.stop()

    ctx.app.on_startup.append(start)
    ctx.app.on_cleanup.append(stop)

    def open_session(channel: Channel, request: web.Request) -> FileSession:
        scope, client, shortcut = identity(settings, auth_on, offered_token(request), channel.peer)
        return FileSession(service, channel, scope=scope, client=client, shortcut=shortcut)

    async def describe(request: web.Request) -> web.StreamResponse:
        return web.json_response({"protocol": PROTOCOL, "transport": "websocket",
                                  "supported_formats": list(SUPPORTED_EXTENSIONS),
                                  "max_file_size": settings.max_file_bytes})

    ctx.websocket(WebSocketRoute(path="/", open_session=open_session, error_message=error_envelope,
                                 codes=m.CODES, http_get=describe))
