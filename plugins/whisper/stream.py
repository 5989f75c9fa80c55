"""Streaming recognition with Whisper: VAD-segmented utterances, bounded partial decodes.

Whisper is not a streaming model: every hypothesis is a full decode of the utterance so far.
The stream keeps that affordable:

- The VAD cuts the audio into utterances; finished utterances are never decoded again, so the
  cost of an update does not grow with the length of the session.
- A partial result is decoded at most every ``partial_interval`` seconds of new audio (with
  the engine's short adaptive window), and put off (up to 3 intervals) while the model is busy
  with other streams (their finals go first).
- Finals are decoded with the engine's final window (``final_window_s``, 15 s; partials 10 s):
  the accuracy of a file transcript.
- When the VAD reports ``silence_since`` (the Silero stream does), the utterance is decoded as
  soon as 0.2 s of quiet follows the speech, ahead of the ``end`` event that comes
  ``min_silence_ms`` later. That decode uses the final window: if no speech came in between, it
  *is* the final result (no second decode), and the final arrives as soon as the VAD confirms
  the end. While the model is busy with other streams that guess is left out.
- An utterance longer than ``max_utterance_s`` is cut at its quietest recent 100 ms.
- In "auto" mode the language is taken from the first utterance of at least 1 s (read off the
  encoder pass the decode makes anyway) and kept for the rest of the stream.

Sample offsets are counted from the start of the stream; :meth:`WhisperStream.finish` and
:meth:`WhisperStream.reset` keep the clock running (the VAD's own count restarts from 0, so the
stream adds the offset to its events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from asrhub.engine import SAMPLE_RATE, Audio, Hypothesis, VADEvent, VADStream
from asrhub_plugins.whisper.engine import PartialTicket

if TYPE_CHECKING:
    from asrhub_plugins.whisper.engine import Decoded, WhisperEngine

PAUSE_TRIGGER = int(0.2 * SAMPLE_RATE)  # quiet after speech before the early decode
DEFAULT_PAD = int(0.1 * SAMPLE_RATE)  # a VAD's end = start of quiet + pad (Silero's default)
MIN_UTTERANCE = int(0.2 * SAMPLE_RATE)  # shorter leftovers (after a cut) are not decoded
REUSE_TOLERANCE = int(0.15 * SAMPLE_RATE)  # a decode this close to the end stands as final
HISTORY = 3 * SAMPLE_RATE  # audio kept before an utterance (the VAD reports starts late)
OVERDUE_INTERVALS = 3  # a partial put off while the model is busy is forced after this many
CUT_SEARCH = 2 * SAMPLE_RATE
CUT_FRAME = SAMPLE_RATE // 10
LOCK_LANGUAGE_AFTER_S = 1.0


@dataclass
class StreamStats:
    decodes: int = 0
    partial_decodes: int = 0
    final_decodes: int = 0
    reused_finals: int = 0  # finals that cost no decode (the last partial covered them)
    deferred_partials: int = 0  # accept() calls that put a due partial off (model busy)
    cancelled_partials: int = 0  # partials withdrawn before they ran (the final was asked for)
    forced_cuts: int = 0
    decode_seconds: float = 0.0


@dataclass
class _Utterance:
    start: int
    since: int  # sample of the last decode (or the start): partials count new audio from here
    number: int | None = None  # assigned when the first hypothesis is emitted
    decoded_end: int | None = None  # audio covered by ``last``
    last: Decoded | None = None
    last_is_final_quality: bool = False  # ``last`` was decoded as a final would be
    last_text: str | None = None  # text of the last partial sent


class _AudioBuffer:
    """The recent audio of the stream, addressed by absolute sample offsets."""

    def __init__(self) -> None:
        self._data = np.zeros(32 * SAMPLE_RATE, dtype=np.float32)
        self.start = 0
        self._len = 0

    @property
    def end(self) -> int:
        return self.start + self._len

    def append(self, pcm: Audio) -> None:
        need = self._len + len(pcm)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[:self._len] = self._data[:self._len]
            self._data = grown
        self._data[self._len:need] = pcm
        self._len = need

    def discard_before(self, sample: int) -> None:
        drop = min(sample - self.start, self._len)
        if drop < 5 * SAMPLE_RATE:  # amortise the move
            return
        self._data[:self._len - drop] = self._data[drop:self._len]
        self._len -= drop
        self.start += drop

    def view(self, begin: int, end: int) -> Audio:
        begin = max(begin, self.start)
        end = max(begin, min(end, self.end))
        return self._data[begin - self.start:end - self.start]

    def clear(self, at: int) -> None:
        self.start = at
        self._len = 0


class WhisperStream:
    """One session's streaming state. Calls for one stream never overlap (not thread-safe);
    many streams share the engine."""

    def __init__(self, engine: WhisperEngine, language: str | None, vad: VADStream) -> None:
        settings = engine.settings
        self._engine = engine
        self._vad = vad
        self._pad = int(getattr(vad, "speech_pad", DEFAULT_PAD))
        self._language = language  # None: detect, then keep
        self._partials = settings.partial_interval > 0
        self._interval = max(1, int(settings.partial_interval * SAMPLE_RATE))
        self._max_utterance = int(settings.max_utterance_s * SAMPLE_RATE)
        self._condition = settings.condition_on_previous
        self._audio = _AudioBuffer()
        self._clock = 0  # samples accepted
        self._vad_offset = 0  # stream sample of the VAD's sample 0
        self._last_end = 0
        self._utterance: _Utterance | None = None
        self._count = 0
        self._previous_text = ""
        self._ticket = PartialTicket()  # withdraws a waiting partial (cancel_partial)
        self.stats = StreamStats()

    @property
    def language(self) -> str | None:
        """The stream's language: given, or detected and kept (None until then)."""
        return self._language

    @property
    def samples(self) -> int:
        return self._clock

    @property
    def partials(self) -> bool:
        """Whether partial hypotheses are decoded every ``partial_interval`` of new audio. A
        consumer that only uses finished utterances sets it False: the decode at a pause (which
        usually is the final) still runs; the timer's decodes do not."""
        return self._partials

    @partials.setter
    def partials(self, value: bool) -> None:
        self._partials = bool(value) and self._engine.settings.partial_interval > 0

    # ------------------------------------------------------------------ ASRStream

    def accept(self, pcm: Audio) -> list[Hypothesis]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if len(pcm) == 0:
            return []
        self._audio.append(pcm)
        self._clock += len(pcm)
        out: list[Hypothesis] = []
        for event in self._vad.accept(pcm):
            out += self._on_event(event)
        if self._utterance is not None:
            self._engine.note_live()  # a final is on its way: file batches make room
            out += self._update(self._utterance)
        keep_from = self._utterance.start if self._utterance is not None else self._clock
        self._audio.discard_before(min(keep_from, self._clock - HISTORY))
        return out

    def finish(self) -> list[Hypothesis]:
        self._ticket.reopen()
        out: list[Hypothesis] = []
        for event in self._vad.finish():
            out += self._on_event(event)
        if self._utterance is not None:
            out += self._finalize(self._clock)
        self._restart_vad()
        return out

    def reset(self) -> None:
        self._ticket.reopen()
        self._restart_vad()
        self._utterance = None
        self._audio.clear(self._clock)
        self._last_end = self._clock
        self._previous_text = ""

    # ------------------------------------------------------------------ internals

    def _restart_vad(self) -> None:
        self._vad.reset()
        self._vad_offset = self._clock

    def _on_event(self, event: VADEvent) -> list[Hypothesis]:
        sample = event.sample + self._vad_offset
        if event.kind == "start":
            if self._utterance is None:
                start = max(sample, self._audio.start, self._last_end)
                self._utterance = _Utterance(start=start, since=start)
            return []
        if self._utterance is None:
            return []
        return self._finalize(sample)

    def _update(self, utterance: _Utterance) -> list[Hypothesis]:
        if self._clock - utterance.start >= self._max_utterance:
            cut = self._cut_point(utterance)
            self.stats.forced_cuts += 1
            out = self._finalize(cut)
            self._utterance = _Utterance(start=cut, since=cut)
            return out
        new_audio = self._clock - utterance.since
        quiet_since = getattr(self._vad, "silence_since", None)
        if quiet_since is not None:
            # A pause: decode once it has lasted PAUSE_TRIGGER (that decode is likely the
            # final), not for the partial timer a moment before (unless the "pause" drags on).
            # It is a guess (speech may resume) at the price of a full-window decode: while
            # the model is busy with other streams it is left out, and the final is decoded
            # when the VAD confirms the end.
            if self._pause_decode_due(utterance, quiet_since):
                if self._engine.busy:
                    self.stats.deferred_partials += 1
                    return []
                return self._partial(utterance, final_quality=True)
            if new_audio < 2 * self._interval:
                return []
        if not self._partials or new_audio < self._interval:
            return []
        if self._engine.busy and new_audio < OVERDUE_INTERVALS * self._interval:
            self.stats.deferred_partials += 1
            return []
        return self._partial(utterance)

    def _pause_decode_due(self, utterance: _Utterance, quiet_since: int) -> bool:
        quiet_since += self._vad_offset
        if quiet_since <= utterance.start or self._clock - quiet_since < max(PAUSE_TRIGGER, self._pad):
            return False
        return not self._covers(utterance, quiet_since + self._pad)

    @staticmethod
    def _covers(utterance: _Utterance, end: int) -> bool:
        """The last decode can stand as the final up to ``end``: it reaches that far and was
        made with the full window (a partial's shorter window is not final quality)."""
        return (utterance.decoded_end is not None and utterance.last is not None
                and utterance.last_is_final_quality
                and utterance.decoded_end >= end - REUSE_TOLERANCE)

    def cancel_partial(self) -> bool:
        """Withdraw the partial decode this stream is waiting for, if it has not started, and
        skip partial decodes until :meth:`finish` or :meth:`reset` (any thread): the pump does
        this when the final is asked for, so that the final does not wait for a partial that
        waits behind other sessions' finals."""
        return self._ticket.cancel()

    def _partial(self, utterance: _Utterance, *, final_quality: bool = False) -> list[Hypothesis]:
        decoded = self._decode(utterance.start, self._clock, partial=not final_quality,
                               ticket=self._ticket)
        if decoded.cancelled:
            self.stats.cancelled_partials += 1
            return []
        self.stats.partial_decodes += 1
        utterance.decoded_end = utterance.since = self._clock
        utterance.last = decoded
        # A partial decoded the way a final is (with at least the final's window) may stand.
        utterance.last_is_final_quality = (
            final_quality or decoded.window >= self._engine.final_window(self._clock - utterance.start))
        if not self._partials or not decoded.text or decoded.text == utterance.last_text:
            return []
        utterance.last_text = decoded.text
        return [self._hypothesis(utterance, decoded, False, self._clock)]

    def _finalize(self, end: int) -> list[Hypothesis]:
        utterance, self._utterance = self._utterance, None
        assert utterance is not None
        end = min(max(end, utterance.start), self._clock)
        self._last_end = end
        if end - utterance.start < MIN_UTTERANCE and utterance.number is None:
            return []
        if utterance.last is not None and self._covers(utterance, end):
            decoded = utterance.last
            self.stats.reused_finals += 1
        else:
            decoded = self._decode(utterance.start, end)
            self.stats.final_decodes += 1
        if self._language is None and decoded.text and decoded.duration >= LOCK_LANGUAGE_AFTER_S:
            self._language = decoded.language
        if not decoded.text and utterance.number is None:
            return []  # nothing was said and nothing was shown
        if decoded.text:
            self._previous_text = decoded.text
        audio = self._audio.view(utterance.start, end).copy()
        return [self._hypothesis(utterance, decoded, True, end, audio)]

    def _decode(self, begin: int, end: int, *, partial: bool = False,
                ticket: PartialTicket | None = None) -> Decoded:
        decoded = self._engine.decode(
            self._audio.view(begin, end), self._language,
            previous_text=self._previous_text if self._condition else "", partial=partial,
            ticket=ticket)
        self.stats.decodes += 1
        self.stats.decode_seconds += decoded.compute_s
        return decoded

    def _hypothesis(self, utterance: _Utterance, decoded: Decoded, final: bool, end: int,
                    audio: Audio | None = None) -> Hypothesis:
        if utterance.number is None:
            self._count += 1
            utterance.number = self._count
        return Hypothesis(
            text=decoded.text,
            is_final=final,
            utterance=utterance.number,
            start=utterance.start / SAMPLE_RATE,
            end=end / SAMPLE_RATE,
            confidence=decoded.confidence,
            language=decoded.language,
            audio=audio,
        )

    def _cut_point(self, utterance: _Utterance) -> int:
        """The middle of the quietest 100 ms in the last 2 s (not in the first 2 s)."""
        begin = max(utterance.start + CUT_SEARCH, self._clock - CUT_SEARCH)
        audio = self._audio.view(begin, self._clock)
        frames = len(audio) // CUT_FRAME
        if frames == 0:
            return self._clock
        energy = np.square(audio[:frames * CUT_FRAME].reshape(frames, CUT_FRAME)).mean(axis=1)
        return begin + int(np.argmin(energy)) * CUT_FRAME + CUT_FRAME // 2
