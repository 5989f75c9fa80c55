"""Recognition of one segment: text and speaker, both in the inference executor, each call
tagged with its engine by construction (:class:`Engines`). Segmentation is the core's
(:mod:`asrhub.segmenter`); the language rule is the core's (:mod:`asrhub.language`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from asrhub.config import ConfigError
from asrhub.engine import SAMPLE_RATE, Audio, EngineError
from asrhub.executor import Priority
from asrhub.language import LanguagePin
from asrhub.segmenter import SpeechEnded, UtteranceSegmenter
from asrhub.speakers import closest

from .messages import Result, Speaker
from .settings import BroadcastSettings

if TYPE_CHECKING:
    from asrhub.hub import EngineKind
    from asrhub.protocol import ProtocolContext

log = structlog.get_logger("asrhub.session_broadcast")

# Audio kept before the current position while nobody speaks: the VAD reports a start up to
# min_speech_ms + speech_pad_ms (and a hesitant onset) before the window that confirms it.
IDLE_KEEP_S = 2.0
# Where an over-long segment is cut: the quietest 100 ms of its last few seconds.
CUT_SEARCH_S = 4.0


class Engines:
    """The hub's engines as a broadcast session uses them: ``call(kind, fn, *args)`` runs
    ``fn(engine, *args)`` in the executor, tagged with that engine, and adds the time to
    ``processing_seconds``."""

    def __init__(self, ctx: ProtocolContext) -> None:
        self.ctx = ctx
        self.processing_seconds = 0.0

    async def call(self, kind: EngineKind, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.ctx.infer(kind, fn, *args, priority=Priority.LIVE)
        finally:
            self.processing_seconds += time.perf_counter() - started

    async def load(self, settings: BroadcastSettings) -> bool:
        """Load what a session needs; True when speakers can be identified. Without a usable
        speaker engine or voiceprint store the session still runs: every speaker is unknown."""
        hub = self.ctx.hub
        await hub.vad()
        await hub.asr()
        if not settings.identify_speakers:
            return False
        try:
            return await hub.speaker() is not None and await hub.voiceprints() is not None
        except (EngineError, ConfigError) as exc:
            log.warning("speaker_identification_unavailable", error=str(exc))
            return False


def make_segmenter(settings: BroadcastSettings, vad_stream: Any) -> UtteranceSegmenter:
    """Segments are the VAD's regions; speech over max_segment_s is cut at its quietest point."""
    return UtteranceSegmenter(vad_stream, history_samples=int(IDLE_KEEP_S * SAMPLE_RATE),
                              max_samples=int(settings.max_segment_s * SAMPLE_RATE),
                              cut_search_samples=int(CUT_SEARCH_S * SAMPLE_RATE))


class Recognizer:
    """Text and speaker of one segment (both in the executor, concurrently)."""

    def __init__(self, engines: Engines, settings: BroadcastSettings, identify_speakers: bool) -> None:
        self.engines = engines
        self.settings = settings
        self.language = LanguagePin(settings.language or None, settings.language_lock_s)
        self.identify_speakers = identify_speakers

    async def recognize(self, segment: SpeechEnded) -> Result | None:
        """The segment's result, or None when nothing was said."""
        text_job = self.engines.call(
            "asr", lambda asr, audio, lang: asr.transcribe(audio, language=lang), segment.audio,
            self.language.language)
        outcome = await asyncio.gather(text_job, self._identify(segment), return_exceptions=True)
        transcript, speaker = outcome
        if isinstance(transcript, BaseException):
            raise transcript
        if isinstance(speaker, BaseException):
            if isinstance(speaker, asyncio.CancelledError):
                raise speaker
            log.warning("speaker_identification_failed", error=repr(speaker))
            speaker = Speaker.unknown()
        text = transcript.text.strip()
        self.language.observe(transcript.language, segment.duration, text)
        return Result(text, speaker) if text else None

    async def _identify(self, segment: SpeechEnded) -> Speaker:
        if not self.identify_speakers or segment.duration < self.settings.min_speaker_s:
            return Speaker.unknown()
        embedding = await self.engines.call("speaker", _embed, segment.audio)
        if embedding is None:
            return Speaker.unknown()
        return await self.engines.call("voiceprints", self._match, embedding)

    def _match(self, store: Any, embedding: tuple[Any, str, float]) -> Speaker:
        vector, engine_name, default_threshold = embedding
        # The closest voiceprint of this engine whatever its score, so an unknown speaker still
        # reports how close the nearest one came.
        best = closest(vector, store, engine=engine_name)
        if best is None:
            return Speaker.unknown()
        threshold = self.settings.speaker_threshold or default_threshold
        if best.score >= threshold:
            return Speaker(best.speaker_id, best.name, best.score)
        return Speaker.unknown(max(best.score, 0.0))


def _embed(speaker: Any, audio: Audio) -> tuple[Any, str, float] | None:
    try:
        vector = speaker.embed(audio)
    except EngineError as exc:  # too little speech once silences are removed
        log.debug("segment_not_embedded", reason=str(exc))
        return None
    return vector, speaker.name, float(speaker.default_threshold)
