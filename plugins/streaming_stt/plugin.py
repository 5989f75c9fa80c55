"""The streaming STT protocol (seed: streaming-stt-8765.md) on port 8765."""

from __future__ import annotations

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import StreamingSTTSettings


def _setup(ctx) -> None:
    from .handler import setup  # imported lazily: listing plugins loads no aiohttp handlers

    setup(ctx)


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name="streaming_stt",
        default_port=8765,
        description="Streaming speech-to-text over WebSocket: partial results while audio "
                    "flows, final on stop (PCM int16 16 kHz or webm/ogg from MediaRecorder)",
        setup=_setup,
        settings_class=StreamingSTTSettings,
    )]
