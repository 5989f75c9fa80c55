"""asrhub plugin: the VAD-segmented streaming protocol (seed ``vad-stream-9200.md``).

WebSocket on :9200 (``ws://host:9200/``): binary PCM int16 LE 16 kHz mono in, VAD events and
one final result per speech segment out; batch mode, speaker registration and verification
by JSON command. An HTTP service for static files (the demo page) listens on :9201.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from asrhub.config import ConfigError
from asrhub.hookspecs import hookimpl
from asrhub.hub import Hub
from asrhub.specs import ProtocolSpec

from .handler import PROTOCOL, make_ws_handler, setup_static, static_root
from .messages import ProtocolError, parse_language
from .settings import VadStreamSettings

log = structlog.get_logger("asrhub.vad_stream")


def _check(hub: Hub, settings: VadStreamSettings) -> None:
    """What the settings class cannot see alone: the engines they need exist."""
    where = f"{hub.config.source}: [protocols.{PROTOCOL}]"
    try:
        if settings.language:
            parse_language(settings.language)
    except ProtocolError as exc:
        raise ConfigError(f"{where} language: {exc.message}") from None
    needed = {"asr": hub.engine_name("asr", settings.asr_engine or None), "vad": hub.engine_name("vad")}
    for kind, name in needed.items():
        if name == "none":
            raise ConfigError(f"{where} needs an {kind} engine ([engines] {kind} is \"none\")")
    if settings.ns_enabled:
        name = hub.engine_name("denoise", settings.ns_engine or None)
        if name == "none":
            raise ConfigError(f"{where} ns_enabled needs a noise suppressor: set [engines] denoise "
                              f"or ns_engine (installed: {', '.join(sorted(hub.engine_specs['denoise'])) or 'none'})")
        if name not in hub.engine_specs["denoise"]:
            raise ConfigError(f"{where} ns_engine: no noise suppressor named {name!r}")


def setup(ctx) -> None:
    app, hub, settings = ctx.app, ctx.hub, ctx.settings
    _check(hub, settings)
    app.router.add_get("/", make_ws_handler(settings))

    if settings.speaker_verification_required or settings.ns_enabled:
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

        app.on_startup.append(preload)


def setup_extra(ctx) -> None:
    app, settings, extra = ctx.app, ctx.settings, ctx.extra
    if extra == "static":
        setup_static(app, static_root(settings))


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name=PROTOCOL,
        default_port=9200,
        description="VAD-segmented streaming ASR: PCM16 over WebSocket, speech_start/speech_end "
                    "and one result per segment; batch mode; speaker registration/verification",
        setup=setup,
        settings_class=VadStreamSettings,
        extra_ports={"static": 9201},
        setup_extra=setup_extra,
    )]
