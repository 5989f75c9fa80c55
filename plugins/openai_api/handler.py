"""aiohttp glue: the HTTP routes, the Realtime WebSocket route, and OpenAI's error shape for
the core's own refusals (401/403) and aiohttp's (404/405/413)."""

from __future__ import annotations

from aiohttp import web

from asrhub.appkeys import REFUSAL_KEY
from asrhub.config import ConfigError
from asrhub.protocol import ErrorCodes, ProtocolContext, ProtocolError, WebSocketRoute

from . import messages as m
from . import realtime_messages as rm
from .realtime import RealtimeSession
from .service import SERVICE_KEY, AudioService, openai_error_middleware

REALTIME_CODES = ErrorCodes(bad_message=rm.INVALID_EVENT, too_big=rm.TOO_BIG, busy=rm.SERVER_BUSY,
                            internal=rm.SERVER_ERROR, too_many_connections=rm.TOO_MANY_CONNECTIONS)


def refusal(status: int, code: str, message: str) -> web.Response:
    code = {"unauthorized": m.INVALID_API_KEY}.get(code, code)
    return web.json_response(m.error_body(message, status=status, code=code), status=status)


def setup(ctx: ProtocolContext) -> None:
    import av  # noqa: F401 - FFmpeg's bindings now, not in the first request's worker

    app = ctx.app
    assert app is not None
    installed = ctx.hub.engine_specs["asr"]
    for model, engine in ctx.settings.models.items():
        if engine and engine not in installed:
            raise ConfigError(f"[protocols.{ctx.name}] models: {model!r} maps to {engine!r}, which "
                              f"is no installed ASR engine ({', '.join(sorted(installed))})")
    service = AudioService(ctx)
    app.middlewares.append(openai_error_middleware())
    app[REFUSAL_KEY] = refusal
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/audio/transcriptions", service.transcriptions)
    app.router.add_post("/v1/audio/translations", service.translations)
    app.router.add_get("/v1/models", service.list_models)
    app.router.add_get("/v1/models/{model}", service.get_model)

    def open_session(channel, request: web.Request) -> RealtimeSession:
        intent = request.query.get("intent", "")
        if intent != "transcription":
            raise ProtocolError(rm.UNSUPPORTED_INTENT,
                                "this server runs Realtime transcription sessions only: connect "
                                "to /v1/realtime?intent=transcription", fatal=True)
        beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")
        model = request.query.get("model") or None
        if model is not None:
            service.engine_for(model)
        return RealtimeSession(channel, ctx, service, dialect="beta" if beta else "ga",
                               model=model)

    async def usage(request: web.Request) -> web.StreamResponse:
        return web.json_response(m.error_body(
            "connect a WebSocket to /v1/realtime?intent=transcription", status=426,
            code="upgrade_required"), status=426, headers={"Upgrade": "websocket"})

    ctx.websocket(WebSocketRoute(path="/v1/realtime", open_session=open_session,
                                 error_message=rm.error_event, codes=REALTIME_CODES,
                                 http_get=usage))
