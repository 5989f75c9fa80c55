"""Cut a live audio stream into speech segments, with the seed's dual hysteresis.

The hub's VAD engine reports raw speech regions (``VADEvent('start'|'end', sample)``). On top of
them the seed asks for hysteresis in both directions:

- enter speech only after ``speech_frames`` consecutive frames of speech (a shorter blip never
  produces ``speech_start``);
- leave speech only after ``silence_frames`` consecutive frames of silence (a shorter pause
  joins the two regions into one segment).

A finished segment carries its audio (``prefix`` of pre-roll before the first region, the
silence window after the last one) and how much of it the VAD called speech, for the seed's
speech-ratio filter. Everything here is synchronous (the session runs it in the inference
executor); one segmenter serves one connection and its calls never overlap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from asrhub.engine import Audio, VADEvent, VADStream


@dataclass(frozen=True)
class SpeechStarted:
    sample: int  # where the speech began, in samples from the start of the stream


@dataclass(frozen=True)
class SpeechEnded:
    audio: Audio = field(repr=False)
    start: int  # stream offset of audio[0]
    speech_samples: int  # samples the VAD called speech
    forced: bool = False  # cut at max_segment, speech goes on

    @property
    def samples(self) -> int:
        return len(self.audio)

    @property
    def speech_ratio(self) -> float:
        return self.speech_samples / len(self.audio) if len(self.audio) else 0.0


SegmentEvent = SpeechStarted | SpeechEnded


class _State(enum.Enum):
    IDLE = "idle"  # no speech
    PENDING = "pending"  # the VAD hears speech, not yet for speech_frames
    SPEECH = "speech"  # speech_start sent, the VAD hears speech
    HANGOVER = "hangover"  # speech_start sent, the VAD hears silence, not yet for silence_frames


class _AudioHistory:
    """The recent audio of a stream, addressed by stream offset."""

    def __init__(self) -> None:
        self.chunks: list[Audio] = []
        self.start = 0  # stream offset of chunks[0][0]
        self.end = 0

    def append(self, pcm: Audio) -> None:
        if len(pcm):
            self.chunks.append(pcm)
            self.end += len(pcm)

    def drop_before(self, offset: int) -> None:
        """Forget whole chunks that end at or before ``offset``."""
        while self.chunks and self.start + len(self.chunks[0]) <= offset:
            self.start += len(self.chunks.pop(0))

    def slice(self, begin: int, end: int) -> Audio:
        begin, end = max(begin, self.start), min(end, self.end)
        if end <= begin:
            return np.zeros(0, np.float32)
        parts, offset = [], self.start
        for chunk in self.chunks:
            lo, hi = max(begin - offset, 0), min(end - offset, len(chunk))
            if lo < hi:
                parts.append(chunk[lo:hi])
            offset += len(chunk)
            if offset >= end:
                break
        return np.concatenate(parts).astype(np.float32, copy=False)


class Segmenter:
    def __init__(
        self,
        vad: VADStream,
        *,
        frame_samples: int = 512,
        speech_frames: int = 3,
        silence_frames: int = 10,
        prefix_samples: int = 4800,
        history_samples: int = 32000,
        max_segment_samples: int = 30 * 16000,
    ) -> None:
        self.vad = vad
        self.enter = speech_frames * frame_samples
        self.exit = silence_frames * frame_samples
        self.prefix = prefix_samples
        self.history_samples = max(history_samples, prefix_samples)
        self.max_segment = max(max_segment_samples, self.enter + self.exit + 1)
        self._reset_state()

    def _reset_state(self) -> None:
        self.pos = 0  # samples fed so far
        self.history = _AudioHistory()
        self.state = _State.IDLE
        self.region_start = 0  # start of the VAD region now open (PENDING, SPEECH)
        self.region_end = 0  # end of the last VAD region (HANGOVER)
        self.segment_start = 0  # start of the segment's first VAD region
        self.speech_samples = 0  # closed VAD regions of the segment
        self.floor = 0  # end of the last segment: the next one's audio starts after it

    @property
    def in_speech(self) -> bool:
        """True between ``speech_start`` and ``speech_end`` (the seed's ``is_speeching``)."""
        return self.state in (_State.SPEECH, _State.HANGOVER)

    # ------------------------------------------------------------------ feeding

    def accept(self, pcm: Audio) -> list[SegmentEvent]:
        """Feed audio; return the segment events it completes, in stream order."""
        self.history.append(pcm)
        self.pos += len(pcm)
        out: list[SegmentEvent] = []
        for event in sorted(self.vad.accept(pcm), key=lambda e: e.sample):
            self._handle(event, out)
        self._advance(self.pos, out)
        self._forget()
        return out

    def finish(self) -> list[SegmentEvent]:
        """End of the stream (or of streaming mode): close an open segment, then start afresh."""
        out: list[SegmentEvent] = []
        for event in sorted(self.vad.finish(), key=lambda e: e.sample):
            self._handle(event, out)
        self._advance(self.pos, out)
        if self.state is _State.SPEECH:
            self.speech_samples += self.pos - self.region_start
            self._emit_end(self.pos, out)
        elif self.state is _State.HANGOVER:
            self._emit_end(min(self.region_end + self.exit, self.pos), out)
        self.reset()
        return out

    def reset(self) -> None:
        """Drop everything; the next audio starts a new stream at offset 0."""
        self.vad.reset()
        self._reset_state()

    # ------------------------------------------------------------------ state machine

    def _handle(self, event: VADEvent, out: list[SegmentEvent]) -> None:
        sample = min(max(event.sample, self.floor), self.pos)
        self._advance(sample, out)
        if event.kind == "start":
            if self.state is _State.IDLE:
                self.state = _State.PENDING
                self.region_start = self.segment_start = sample
                self.speech_samples = 0
            elif self.state is _State.HANGOVER:  # a pause shorter than silence_frames
                self.state = _State.SPEECH
                self.region_start = max(sample, self.region_end)
        elif event.kind == "end":
            if self.state is _State.PENDING:
                length = sample - self.region_start
                if length >= self.enter:  # long enough, but both edges came in one chunk
                    out.append(SpeechStarted(self.segment_start))
                    self.speech_samples += length
                    self.region_end = sample
                    self.state = _State.HANGOVER
                else:  # a blip shorter than speech_frames: never speech
                    self.state = _State.IDLE
            elif self.state is _State.SPEECH:
                self.speech_samples += max(sample - self.region_start, 0)
                self.region_end = sample
                self.state = _State.HANGOVER

    def _advance(self, now: int, out: list[SegmentEvent]) -> None:
        """Let time run to stream offset ``now``: hysteresis timers and the length cap."""
        while True:
            if self.state is _State.PENDING and now - self.region_start >= self.enter:
                out.append(SpeechStarted(self.segment_start))
                self.state = _State.SPEECH
            elif self.state is _State.HANGOVER and now - self.region_end >= self.exit:
                self._emit_end(self.region_end + self.exit, out)
            elif self.in_speech and now - self._audio_start() >= self.max_segment:
                cut = self._audio_start() + self.max_segment
                still_speaking = self.state is _State.SPEECH
                if still_speaking:
                    self.speech_samples += cut - self.region_start
                else:
                    cut = min(cut, self.region_end + self.exit)
                self._emit_end(cut, out, forced=True)
                if still_speaking:  # the VAD region goes on: it may become the next segment
                    self.state = _State.PENDING
                    self.region_start = self.segment_start = cut
                    self.speech_samples = 0
            else:
                return

    def _audio_start(self) -> int:
        return max(self.segment_start - self.prefix, self.floor, 0)

    def _emit_end(self, end: int, out: list[SegmentEvent], *, forced: bool = False) -> None:
        begin = self._audio_start()
        audio = self.history.slice(begin, end)
        out.append(SpeechEnded(audio, begin, min(self.speech_samples, len(audio)), forced))
        self.state = _State.IDLE
        self.floor = end
        self.speech_samples = 0

    def _forget(self) -> None:
        if self.state is _State.IDLE:
            keep_from = self.pos - self.history_samples
        else:
            keep_from = self._audio_start()
        self.history.drop_before(keep_from)
