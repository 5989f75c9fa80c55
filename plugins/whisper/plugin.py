"""asrhub plugin: the faster-whisper speech-recognition engine (name ``whisper``, the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asrhub.hookspecs import hookimpl
from asrhub.specs import EngineSpec
from asrhub_plugins.whisper.settings import WhisperSettings

if TYPE_CHECKING:
    from asrhub.engine import VADEngine
    from asrhub.hub import Hub
    from asrhub_plugins.whisper.engine import WhisperEngine


def _load(settings: WhisperSettings, hub: Hub | None) -> WhisperEngine:
    from asrhub_plugins.whisper.engine import WhisperEngine

    def silero() -> VADEngine | None:
        # Streams opened without a VAD use the hub's Silero engine (its ONNX session and its
        # [engines.silero] settings), or the engine's own when the hub has none.
        if hub is None or "silero" not in hub.engine_specs["vad"]:
            return None
        return hub.engine_sync("vad", "silero")

    return WhisperEngine(settings, state_dir=hub.state_dir if hub is not None else None,
                         vad_provider=silero)


@hookimpl
def asrhub_register_asr_engines() -> list[EngineSpec]:
    return [EngineSpec(
        name="whisper",
        description="Whisper via faster-whisper/CTranslate2 (bundled: multilingual base, tiny.en)",
        factory=_load,
        settings_class=WhisperSettings,
    )]
