"""What the Wyoming listener offers: one ``asr`` program per configured ASR engine.

The hub's shared engines serve every program (loaded once per process, shared with every other
protocol). A client picks one by program or model name (``select-program``, or ``transcribe``'s
``name``); without a name it gets the first, the hub's default ASR engine, which is also the
one Home Assistant uses (it reads the first ``asr`` program of ``info``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from asrhub import __version__
from asrhub.engine import ASRStream, Audio, EngineError
from asrhub.executor import Priority
from asrhub.hub import Hub
from asrhub.protocol import ProtocolError

from . import messages as m
from .settings import WyomingSettings

log = structlog.get_logger("asrhub.wyoming")

ASRHUB = Attribution(name="asrhub", url="https://pypi.org/project/asrhub/")
# Who made the models behind the hub's built-in engines (shown by Home Assistant).
MODEL_ATTRIBUTION = {
    "whisper": Attribution(name="OpenAI Whisper (CTranslate2 via faster-whisper)",
                           url="https://github.com/SYSTRAN/faster-whisper"),
    "funasr": Attribution(name="FunASR", url="https://github.com/modelscope/FunASR"),
}


@dataclass(frozen=True)
class SpeakerMatch:
    speaker_id: str
    name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.speaker_id, "name": self.name, "score": round(self.score, 4)}


class Catalog:
    """Engines, ``info`` and streams for the sessions of one listener."""

    def __init__(self, hub: Hub, settings: WyomingSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.engines = configured_engines(hub)
        self._info: Info | None = None

    @property
    def default_engine(self) -> str:
        if not self.engines:
            raise ProtocolError(m.UNKNOWN_MODEL, "no ASR engine is configured ([engines] asr = \"none\")",
                                fatal=True)
        return self.engines[0]

    def model_name(self, engine: str) -> str:
        loaded = self.hub.loaded_engine("asr", engine)
        if loaded is not None and getattr(loaded, "model_name", None):
            return str(loaded.model_name)
        settings = self.hub.settings_for("asr", engine)
        return str(getattr(settings, "model", "") or engine)

    def resolve(self, name: str | None) -> str:
        """The engine a program or model ``name`` means (None: the default engine)."""
        if not name:
            return self.default_engine
        for engine in self.engines:
            if name in (engine, self.model_name(engine)):
                return engine
        offered = ", ".join(f"{e} ({self.model_name(e)})" for e in self.engines) or "none"
        raise ProtocolError(m.UNKNOWN_MODEL,
                            f"no program or model named {name[:60]!r} (offered: {offered})", fatal=True)

    async def info(self) -> Info:
        """``info``: an ``asr`` program per engine, its model and languages. Engines are loaded
        to learn their languages (once; they are shared); one that cannot load is listed with
        ``installed: false``."""
        if self._info is not None:
            return self._info
        programs = []
        complete = True
        for engine_name in self.engines:
            spec = self.hub.engine_specs["asr"][engine_name]
            try:
                engine = await self.hub.asr(engine_name)
                installed = True
            except Exception as exc:  # noqa: BLE001 - listed as not installed
                log.warning("engine_unavailable", engine=engine_name, error=str(exc))
                engine, installed, complete = None, False, False
            model = self.model_name(engine_name)
            languages = languages_of(engine, self.hub.settings_for("asr", engine_name))
            attribution = MODEL_ATTRIBUTION.get(engine_name, ASRHUB)
            programs.append(AsrProgram(
                name=engine_name,
                description=f"asrhub: {spec.description}",
                attribution=ASRHUB,
                installed=installed,
                version=__version__,
                models=[AsrModel(name=model, description=f"{engine_name} {model}",
                                 attribution=attribution, installed=installed,
                                 languages=languages, version=None)],
                supports_transcript_streaming=True,
                requires_external_vad=True,  # the client decides when audio stops
            ))
        info = Info(asr=programs)
        if complete:
            self._info = info
        return info

    async def open_stream(self, engine_name: str, language: str | None) -> ASRStream:
        """A recognition stream on the shared engine, segmented by the shared VAD engine."""
        asr = await self.hub.asr(engine_name)
        vad = await self.hub.vad()

        def build() -> ASRStream:
            return asr.open_stream(language=language,
                                   vad=vad.open_stream() if vad is not None else None)

        return await self.hub.executor.run(build, priority=Priority.LIVE)

    async def identify(self, audio: Audio) -> SpeakerMatch | None:
        """The enrolled speaker of ``audio`` whose voiceprint reaches the threshold, else None."""
        from asrhub_plugins.speakers.matching import identify

        speaker = await self.hub.speaker()
        store = await self.hub.voiceprints()
        if speaker is None or store is None:
            return None
        threshold = self.settings.speaker_threshold or float(speaker.default_threshold)

        def match() -> SpeakerMatch | None:
            try:
                embedding = speaker.embed(audio)
            except EngineError as exc:  # too little speech to embed
                log.debug("speaker_not_embedded", reason=str(exc))
                return None
            best = identify(embedding, store, threshold, engine=getattr(speaker, "name", None))
            return SpeakerMatch(best.speaker_id, best.name, best.score) if best else None

        return await self.hub.executor.run(match, priority=Priority.LIVE,
                                           engine=self.hub.engine_name("speaker"))


def configured_engines(hub: Hub) -> list[str]:
    """The default ASR engine first, then every other ASR engine with an ``[engines.<name>]``
    section in the config."""
    names: list[str] = []
    default = hub.engine_name("asr")
    if default != "none":
        names.append(default)
    for name in hub.config.engine_sections:
        if name in hub.engine_specs["asr"] and name not in names:
            names.append(name)
    return names


def languages_of(engine: Any, settings: Any) -> list[str]:
    """Languages an engine recognises: its ``supported_languages`` when it says, else the
    configured language (if not "auto")."""
    languages = getattr(engine, "supported_languages", None)
    if languages:
        return sorted(str(code) for code in languages)
    configured = str(getattr(settings, "language", "") or "")
    return [configured] if configured and configured != "auto" else []

