"""asrhub plugin: the VAD-segmented streaming protocol (seed ``vad-stream-9200.md``).

WebSocket on :9200 (``ws://host:9200/``): binary PCM int16 LE 16 kHz mono in, VAD events and
one final result per speech segment out; batch mode, speaker registration and verification
by JSON command. An HTTP service for static files (the demo page) listens on :9201.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from asrhub.hookspecs import hookimpl
from asrhub.protocol import ProtocolContext
from asrhub.specs import ProtocolSpec

from .settings import VadStreamSettings, check

log = structlog.get_logger("asrhub.vad_stream")


def setup(ctx: ProtocolContext) -> None:
    from .handler import route

    ctx.websocket(route(ctx))
    hub, settings = ctx.hub, ctx.settings
    if (settings.speaker_verification_required or settings.ns_enabled) and ctx.app is not None:
        async def preload(app: web.Application) -> None:
            # The seed loads the speaker model at start-up only when verification is enforced;
            # otherwise on first use (registration or an enabled verification).
            if settings.speaker_verification_required:
                await hub.speaker()
                await hub.voiceprints()
                log.info("vad_stream_speaker_model_preloaded",
                         default_user=settings.speaker_verification_default_user)
            if settings.ns_enabled:
                await hub.denoiser(settings.ns_engine or None)

        ctx.app.on_startup.append(preload)


def setup_extra(ctx: ProtocolContext) -> None:
    from .handler import setup_static, static_root

    if ctx.extra == "static" and ctx.app is not None:
        setup_static(ctx.app, static_root(ctx.settings))


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name="vad_stream",
        default_port=9200,
        description="VAD-segmented streaming ASR: PCM16 over WebSocket, speech_start/speech_end "
                    "and one result per segment; batch mode; speaker registration/verification",
        setup=setup,
        settings_class=VadStreamSettings,
        extra_ports={"static": 9201},
        setup_extra=setup_extra,
        check=check,
    )]
