"""asrhub plugin: the Silero voice-activity detector (engine name ``silero``, the default VAD)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asrhub.hookspecs import hookimpl
from asrhub.specs import EngineSpec
from asrhub_plugins.vad.silero import SileroSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub
    from asrhub_plugins.vad.silero import SileroVAD


def _load(settings: SileroSettings, hub: Hub) -> SileroVAD:
    from asrhub_plugins.vad.silero import SileroVAD

    return SileroVAD(settings)


@hookimpl
def asrhub_register_vad_engines() -> list[EngineSpec]:
    return [EngineSpec(
        name="silero",
        description="Silero VAD (ONNX, 1 thread per call): streaming speech start/end events",
        factory=_load,
        settings_class=SileroSettings,
    )]
