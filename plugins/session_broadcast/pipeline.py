"""From a live audio stream to results: VAD segmentation, then recognition and speaker
identification of each segment. The engine calls are synchronous; :class:`Recognizer` runs them
in the inference executor, :class:`Segmenter` is itself run there by the session.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from asrhub.engine import (
    SAMPLE_RATE,
    ASREngine,
    Audio,
    EngineError,
    SpeakerEngine,
    VADEngine,
    VADEvent,
    VADStream,
    VoiceprintStore,
)
from asrhub.executor import InferenceExecutor, Priority

from .messages import Result, Speaker
from .settings import BroadcastSettings

log = structlog.get_logger("asrhub.session_broadcast")

# Audio kept before the current position while nobody speaks: the VAD reports a start up to
# min_speech_ms + speech_pad_ms (and a hesitant onset) before the window that confirms it.
IDLE_KEEP_S = 2.0
# Where an over-long segment is cut: the quietest 50 ms of its last few seconds.
CUT_SEARCH_S = 4.0
CUT_WINDOW = 800


@dataclass
class Engines:
    vad: VADEngine
    asr: ASREngine
    speaker: SpeakerEngine | None = None
    voiceprints: VoiceprintStore | None = None


@dataclass
class SpeechSegment:
    start: int  # sample offset in the session's stream
    audio: Audio

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def samples(self) -> int:
        return len(self.audio)


class Segmenter:
    """Cuts a live stream into speech segments with a streaming VAD.

    Synchronous, not thread-safe: the session calls it from one executor job at a time. Holds
    the audio of the segment in progress (at most ``max_segment_s``) plus ``IDLE_KEEP_S``.
    """

    def __init__(self, vad: VADStream, *, max_segment_s: float, min_segment_s: float) -> None:
        self.vad = vad
        self.max_len = int(max_segment_s * SAMPLE_RATE)
        self.min_len = int(min_segment_s * SAMPLE_RATE)
        self.keep = int(IDLE_KEEP_S * SAMPLE_RATE)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0
        self._speech_start: int | None = None

    @property
    def position(self) -> int:
        """Samples accepted so far."""
        return self._buf_start + len(self._buf)

    def accept(self, pcm: Audio) -> list[SpeechSegment]:
        self._buf = np.concatenate([self._buf, pcm]) if len(self._buf) else np.array(pcm, np.float32)
        segments = self._apply(self.vad.accept(pcm))
        self._trim()
        return segments

    def finish(self) -> list[SpeechSegment]:
        segments = self._apply(self.vad.finish())
        if self._speech_start is not None:
            self._cut(segments, self._speech_start, self.position)
            self._speech_start = None
        self._trim()
        return segments

    def _apply(self, events: list[VADEvent]) -> list[SpeechSegment]:
        segments: list[SpeechSegment] = []
        for event in events:
            if event.kind == "start":
                if self._speech_start is None:
                    self._speech_start = max(event.sample, self._buf_start)
            elif self._speech_start is not None:
                self._cut(segments, self._speech_start, event.sample)
                self._speech_start = None
        # Speech that goes on too long: cut it where it is quietest, keep the rest going.
        while self._speech_start is not None and self.position - self._speech_start >= self.max_len:
            cut = self._quiet_point(self._speech_start + self.max_len)
            self._cut(segments, self._speech_start, cut)
            self._speech_start = cut
        return segments

    def _quiet_point(self, limit: int) -> int:
        """The quietest point of the segment's second half (and its last CUT_SEARCH_S)."""
        start = self._speech_start or 0
        lo = max(start + self.max_len // 2, limit - int(CUT_SEARCH_S * SAMPLE_RATE))
        region = self._buf[lo - self._buf_start:limit - self._buf_start]
        count = len(region) // CUT_WINDOW
        if count < 2:
            return limit
        energy = np.square(region[:count * CUT_WINDOW]).reshape(count, CUT_WINDOW).mean(axis=1)
        return lo + int(np.argmin(energy)) * CUT_WINDOW + CUT_WINDOW // 2

    def _cut(self, out: list[SpeechSegment], start: int, end: int) -> None:
        start = max(start, self._buf_start)
        end = min(end, self.position)
        if end - start >= max(self.min_len, 1):
            piece = self._buf[start - self._buf_start:end - self._buf_start].copy()
            out.append(SpeechSegment(start, piece))

    def _trim(self) -> None:
        keep_from = self._speech_start if self._speech_start is not None else self.position - self.keep
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop


class Recognizer:
    """Text and speaker of one segment (both in the executor, concurrently)."""

    def __init__(self, engines: Engines, executor: InferenceExecutor, settings: BroadcastSettings) -> None:
        self.engines = engines
        self.executor = executor
        self.settings = settings
        self.language: str | None = settings.language or None
        speaker = engines.speaker
        self.threshold = settings.speaker_threshold or (
            float(speaker.default_threshold) if speaker is not None else 0.0)
        self.identify_speakers = (settings.identify_speakers and speaker is not None
                                  and engines.voiceprints is not None)

    async def recognize(self, segment: SpeechSegment) -> Result | None:
        """The segment's result, or None when nothing was said."""
        asr = self.engines.asr
        text_job = self.executor.run(self._transcribe, segment.audio, self.language,
                                     priority=Priority.LIVE, engine=getattr(asr, "name", None))
        speaker_job = self._identify(segment)
        outcome = await asyncio.gather(text_job, speaker_job, return_exceptions=True)
        transcript, speaker = outcome
        if isinstance(transcript, BaseException):
            raise transcript
        if isinstance(speaker, BaseException):
            if isinstance(speaker, asyncio.CancelledError):
                raise speaker
            log.warning("speaker_identification_failed", error=repr(speaker))
            speaker = Speaker.unknown()
        if (self.language is None and transcript.language
                and segment.duration >= self.settings.language_lock_s):
            self.language = transcript.language
            log.debug("language_locked", language=self.language)
        text = transcript.text.strip()
        return Result(text, speaker) if text else None

    def _transcribe(self, audio: Audio, language: str | None) -> Any:
        return self.engines.asr.transcribe(audio, language=language)

    async def _identify(self, segment: SpeechSegment) -> Speaker:
        if not self.identify_speakers or segment.duration < self.settings.min_speaker_s:
            return Speaker.unknown()
        speaker = self.engines.speaker
        return await self.executor.run(self._identify_sync, segment.audio, priority=Priority.LIVE,
                                       engine=getattr(speaker, "name", None))

    def _identify_sync(self, audio: Audio) -> Speaker:
        from asrhub_plugins.speakers.matching import identify

        speaker, store = self.engines.speaker, self.engines.voiceprints
        assert speaker is not None and store is not None
        try:
            embedding = speaker.embed(audio)
        except EngineError as exc:  # too little speech once silences are removed
            log.debug("segment_not_embedded", reason=str(exc))
            return Speaker.unknown()
        # The closest voiceprint of this engine whatever its score (identify with no floor),
        # so an unknown speaker still reports how close the nearest one came.
        best = identify(embedding, store, -1.0, engine=getattr(speaker, "name", None))
        if best is None:
            return Speaker.unknown()
        if best.score >= self.threshold:
            return Speaker(best.speaker_id, best.name, best.score)
        return Speaker.unknown(max(best.score, 0.0))
