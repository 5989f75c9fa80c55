"""asrhub plugin: the file-transcription protocol (FunASR-style uploads, port 8767)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import FileTranscriptionSettings

if TYPE_CHECKING:
    from asrhub.protocol import ProtocolContext

PROTOCOL = "file_transcription"
DEFAULT_PORT = 8767


def setup(ctx: ProtocolContext) -> None:
    from .handler import setup as setup_route  # models and aiohttp glue only when served

    setup_route(ctx)


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
