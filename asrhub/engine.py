"""Engine interfaces. Engines know nothing of asyncio: every method is synchronous and the
hub calls them through the inference executor.

Audio inside the hub is one type: mono float32 numpy at 16 kHz (:data:`SAMPLE_RATE`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
Audio = npt.NDArray[np.float32]


class EngineError(RuntimeError):
    """An engine could not do what was asked (model missing, bad input...)."""


class ModelNotAvailable(EngineError):
    """A configured model cannot be had offline; the message says how to provide it."""


# --------------------------------------------------------------------------- ASR


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float = 1.0


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None
    confidence: float | None = None


@dataclass
class Transcript:
    text: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "duration": round(self.duration, 3),
            "segments": [
                {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                | ({"speaker": s.speaker} if s.speaker is not None else {})
                for s in self.segments
            ],
        }


@dataclass
class Hypothesis:
    """A streaming result for one utterance.

    ``is_final`` False: the current best guess for the utterance still being spoken (it may
    change). True: the utterance ended; its text will not change. ``utterance`` counts from 1
    per stream; ``start``/``end`` are seconds from the start of the stream.
    """

    text: str
    is_final: bool
    utterance: int
    start: float
    end: float
    confidence: float = 1.0
    language: str | None = None
    audio: Audio | None = field(default=None, repr=False)


ProgressCallback = Callable[[float], None]


@runtime_checkable
class ASRStream(Protocol):
    """Per-session streaming state. Calls for one stream never overlap.

    Optional attributes a stream may expose (consumers use ``hasattr`` and cope without):
    ``partials`` (bool, settable before the first ``accept``): False skips the decodes that
    only produce partial hypotheses, for a consumer that uses finished utterances only.
    ``cancel_partial()`` (callable from any thread while ``accept`` runs): withdraw a partial
    decode that has not started, so ``accept`` returns sooner; the pump calls it when the
    final is asked for.
    """

    def accept(self, pcm: Audio) -> list[Hypothesis]:
        """Feed audio; return zero or more hypotheses (partials and finished utterances)."""
        ...

    def finish(self) -> list[Hypothesis]:
        """End of audio: return the remaining finished utterance(s), all ``is_final``."""
        ...

    def reset(self) -> None:
        """Drop the utterance in progress and all buffered audio."""
        ...


@runtime_checkable
class ASREngine(Protocol):
    name: str
    model_name: str

    def transcribe(
        self,
        audio: Audio,
        *,
        language: str | None = None,
        word_timestamps: bool = False,
        progress: ProgressCallback | None = None,
        task: Literal["transcribe", "translate"] = "transcribe",
        prompt: str | None = None,
        temperature: float | None = None,
    ) -> Transcript:
        """Recognise a whole recording.

        Optional, with defaults that keep an engine's behaviour: ``task="translate"`` writes
        the text in English whatever the spoken language (engines that cannot translate raise
        :class:`EngineError`); ``prompt`` is text the recording continues from or hotwords
        (the engine's initial prompt; engines without one ignore it); ``temperature`` the
        sampling temperature (None = the engine's default; engines that do not sample
        ignore it).
        """
        ...

    def open_stream(self, *, language: str | None = None, vad: VADStream | None = None) -> ASRStream:
        """A new streaming session; ``vad`` segments utterances where the engine needs it."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- VAD


@dataclass(frozen=True)
class VADEvent:
    kind: Literal["start", "end"]
    sample: int  # offset from the start of the stream, in 16 kHz samples


@runtime_checkable
class VADStream(Protocol):
    """Per-session VAD state. Sample offsets count from the stream's start, and from 0 again
    after :meth:`reset`.

    Optional attributes a stream may expose (consumers use ``getattr`` and cope without):
    ``silence_since`` — the sample where the current pause inside a speech region began (None
    while speech continues), so an ASR stream can decode an utterance before its end is
    confirmed; ``speech_pad`` — samples of padding the VAD adds around speech.
    """

    def accept(self, pcm: Audio) -> list[VADEvent]: ...

    def finish(self) -> list[VADEvent]:
        """End of audio: closes a speech region still open."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class VADEngine(Protocol):
    name: str

    def open_stream(self) -> VADStream: ...

    def speech_regions(self, audio: Audio) -> list[tuple[int, int]]:
        """Offline: (start, end) sample offsets of speech."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- speakers


@runtime_checkable
class SpeakerEngine(Protocol):
    name: str
    dim: int
    default_threshold: float

    def embed(self, audio: Audio) -> npt.NDArray[np.float32]:
        """A unit-length embedding of one speaker's audio."""
        ...

    def close(self) -> None: ...


@dataclass
class Voiceprint:
    speaker_id: str
    name: str
    embedding: npt.NDArray[np.float32]
    created_at: float
    audio_seconds: float
    engine: str
    # Who registered it (a scope a protocol chooses, e.g. a token's name); "" = not recorded.
    # Stores keep it; the overwrite rules of a protocol may compare it.
    owner: str = ""


@runtime_checkable
class VoiceprintStore(Protocol):
    def list(self) -> Sequence[Voiceprint]: ...

    def get(self, speaker_id: str) -> Voiceprint | None: ...

    def put(self, voiceprint: Voiceprint) -> None:
        """Insert or overwrite, atomically."""
        ...

    def delete(self, speaker_id: str) -> bool: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- noise


@runtime_checkable
class DenoiseStream(Protocol):
    def process(self, pcm: Audio) -> Audio:
        """Denoise a chunk; output may lag input by the model's delay."""
        ...

    def flush(self) -> Audio: ...


@runtime_checkable
class Denoiser(Protocol):
    name: str

    def open_stream(self) -> DenoiseStream: ...

    def denoise(self, audio: Audio) -> Audio:
        """Whole recording, delay compensated (output aligned with input)."""
        ...

    def close(self) -> None: ...


def cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0
