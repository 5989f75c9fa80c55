"""OpenAI's speech API on port 8080: the official SDKs and the apps built on them work against
the hub by changing one base URL."""

from __future__ import annotations

from asrhub.hookspecs import hookimpl
from asrhub.specs import ProtocolSpec

from .settings import OpenAISettings


def _setup(ctx) -> None:
    from .handler import setup  # lazily: listing plugins loads no handlers

    setup(ctx)


@hookimpl
def asrhub_register_protocols() -> list[ProtocolSpec]:
    return [ProtocolSpec(
        name="openai_api",
        default_port=8080,
        description="OpenAI-compatible speech API: /v1/audio/transcriptions and translations "
                    "(json, text, srt, vtt, verbose_json, diarized_json, SSE streaming), "
                    "/v1/models, and Realtime transcription sessions at "
                    "/v1/realtime?intent=transcription",
        setup=_setup,
        settings_class=OpenAISettings,
    )]
