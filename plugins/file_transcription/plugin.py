"""asrhub plugin: the file-transcription protocol (FunASR-style uploads, port 8767)."""

from __future__ import annotations

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import FileTranscriptionSettings

PROTOCOL = "file_transcription"
DEFAULT_PORT = 8767


def setup(ctx) -> None:
    app, settings = ctx.app, ctx.settings
    from .handler import setup_app  # aiohttp glue and models only when the protocol is served

    setup_app(app, settings)


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name=PROTOCOL,
        default_port=DEFAULT_PORT,
        description="file transcription: single/chunked uploads, queue, cache, speakers, SRT",
        setup=setup,
        settings_class=FileTranscriptionSettings,
        # Diarization embeds every file: load the speaker model before ready, not mid-service.
        preload=lambda s: ("speaker",) if s.diarization else (),
    )]
