"""Silero VAD (ONNX, 16 kHz) as an asrhub :class:`~asrhub.engine.VADEngine`.

One ONNX Runtime session (1 thread) is shared by every stream; a stream owns its recurrent
state (``h``, ``c``), the 64-sample context the model sees before each 512-sample window, and
the hysteresis state machine. The model is the "sequence" export shipped in the ``silero-vad``
wheel (faster-whisper's bundled copy as a fallback): it takes any number of consecutive windows
in one call, so a 100 ms chunk costs one ``session.run`` however it is cut, and a whole file
costs one call per 10 000 windows.

Events (sample offsets from the start of the stream, 16 kHz):

- ``start``: a window at or above ``threshold`` followed, within ``min_silence_ms`` of quiet,
  by speech that lasts ``min_speech_ms``; the sample is the first such window minus
  ``speech_pad_ms`` (never before the previous ``end``). It is reported ``min_speech_ms`` after
  the speech began.
- ``end``: ``min_silence_ms`` of windows below ``neg_threshold``; the sample is where that quiet
  began plus ``speech_pad_ms``. It is reported ``min_silence_ms`` after the speech stopped.

The same audio gives the same events however it is chunked: audio is buffered into 512-sample
windows and the state machine only ever sees whole windows.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from asrhub.engine import SAMPLE_RATE, Audio, ModelNotAvailable, VADEvent

WINDOW = 512  # samples per model step at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees before each window
STATE_SHAPE = (1, 1, 128)
MAX_WINDOWS_PER_CALL = 10_000


@dataclass(frozen=True)
class SileroSettings:
    """``[engines.silero]``."""

    threshold: float = 0.5
    # Below this a window counts as silence; between the two it continues whatever was going
    # on (hysteresis). Unset: threshold - 0.15, as silero-vad does.
    neg_threshold: float | None = None
    min_speech_ms: int = 250
    # 500 ms splits sentences separated by ~1 s pauses and keeps words of one sentence together.
    min_silence_ms: int = 500
    speech_pad_ms: int = 100

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold {self.threshold} must be between 0 and 1")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold {self.neg_threshold} must be in (0, threshold]")
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.speech_pad_ms > self.min_silence_ms:
            raise ValueError("speech_pad_ms must not exceed min_silence_ms")

    @property
    def negative_threshold(self) -> float:
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


def find_model() -> Path:
    """The silero ONNX sequence model from an installed wheel (never downloaded)."""
    candidates = []
    for package, relative in (("silero_vad", "data/silero_vad_16k_sequence.onnx"),
                              ("faster_whisper", "assets/silero_vad_v6.onnx")):
        # find_spec does not import the package (silero_vad's __init__ imports torch).
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(list(spec.submodule_search_locations)[0]) / relative)
    for path in candidates:
        if path.is_file():
            return path
    raise ModelNotAvailable("the Silero VAD model was not found: install the silero-vad wheel "
                            "(pip install silero-vad; its extras are not needed)")


class _SileroModel:
    """The shared ONNX session. ``session.run`` is safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        self.session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def run(self, windows: np.ndarray, context: np.ndarray, h: np.ndarray,
            c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Speech probabilities of consecutive ``windows`` (n, 512) continuing a stream whose
        last 64 samples were ``context``; returns (probs, h, c)."""
        rows = np.empty((len(windows), CONTEXT + WINDOW), dtype=np.float32)
        rows[:, CONTEXT:] = windows
        rows[0, :CONTEXT] = context
        rows[1:, :CONTEXT] = windows[:-1, -CONTEXT:]
        probs = []
        for begin in range(0, len(rows), MAX_WINDOWS_PER_CALL):
            out, h, c = self.session.run(
                None, {"input": rows[begin:begin + MAX_WINDOWS_PER_CALL], "h": h, "c": c})
            probs.append(np.asarray(out, dtype=np.float32).reshape(-1))
        return np.concatenate(probs), h, c


class _State(Enum):
    SILENCE = "silence"
    PENDING = "pending"  # above threshold, not yet min_speech_ms long
    SPEECH = "speech"


class SileroVADStream:
    """Per-session streaming detector. Not thread-safe (calls for one stream never overlap).

    After :meth:`finish`, call :meth:`reset` before feeding more audio; :meth:`reset` also
    restarts the sample count at 0.
    """

    def __init__(self, model: _SileroModel, settings: SileroSettings) -> None:
        self._model = model
        self._threshold = settings.threshold
        self._neg_threshold = settings.negative_threshold
        self._min_speech = settings.min_speech_ms * SAMPLE_RATE // 1000
        self._min_silence = settings.min_silence_ms * SAMPLE_RATE // 1000
        self._pad = settings.speech_pad_ms * SAMPLE_RATE // 1000
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._leftover = np.zeros(0, dtype=np.float32)
        self._windows = 0  # windows fed to the model so far
        self._samples = 0  # samples accepted so far
        self._state = _State.SILENCE
        self._candidate = 0  # first loud window of a PENDING/SPEECH region
        self._silence_start: int | None = None  # first quiet window inside a region
        self._last_end = 0

    # ------------------------------------------------------------------ read-only state

    @property
    def samples(self) -> int:
        """Samples accepted since the start (or the last reset)."""
        return self._samples

    @property
    def speech_pad(self) -> int:
        """Samples of padding added after the speech in an ``end`` event."""
        return self._pad

    @property
    def in_speech(self) -> bool:
        """A ``start`` has been reported and its ``end`` has not."""
        return self._state is _State.SPEECH

    @property
    def silence_since(self) -> int | None:
        """Inside speech: the sample where the current stretch of quiet began, else None.

        Lets a recogniser start decoding before the ``end`` event (``min_silence_ms`` later)
        confirms the utterance is over."""
        return self._silence_start if self._state is _State.SPEECH else None

    # ------------------------------------------------------------------ streaming

    def accept(self, pcm: Audio) -> list[VADEvent]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._samples += len(pcm)
        buffered = np.concatenate([self._leftover, pcm]) if len(self._leftover) else pcm
        count = len(buffered) // WINDOW
        self._leftover = buffered[count * WINDOW:].copy()
        if count == 0:
            return []
        return self._process(buffered[:count * WINDOW].reshape(count, WINDOW))

    def finish(self) -> list[VADEvent]:
        events: list[VADEvent] = []
        if len(self._leftover):
            tail = np.zeros((1, WINDOW), dtype=np.float32)
            tail[0, :len(self._leftover)] = self._leftover
            self._leftover = np.zeros(0, dtype=np.float32)
            events = self._process(tail)
        if self._state is _State.SPEECH:
            end = self._samples
            if self._silence_start is not None:
                end = min(end, self._silence_start + self._pad)
            events.append(VADEvent("end", end))
            self._last_end = end
        self._state = _State.SILENCE
        self._silence_start = None
        return [VADEvent(e.kind, min(e.sample, self._samples)) for e in events]

    def _process(self, windows: np.ndarray) -> list[VADEvent]:
        probs, self._h, self._c = self._model.run(windows, self._context, self._h, self._c)
        self._context = windows[-1, -CONTEXT:].copy()
        events: list[VADEvent] = []
        for prob in probs:
            start = self._windows * WINDOW
            self._windows += 1
            self._step(float(prob), start, start + WINDOW, events)
        return events

    def _step(self, prob: float, start: int, end: int, events: list[VADEvent]) -> None:
        loud = prob >= self._threshold
        quiet = prob < self._neg_threshold
        if self._state is _State.SILENCE:
            if loud:
                self._state = _State.PENDING
                self._candidate = start
                self._silence_start = None
            return
        if loud:
            self._silence_start = None
            if self._state is _State.PENDING and end - self._candidate >= self._min_speech:
                self._state = _State.SPEECH
                events.append(VADEvent("start", max(self._candidate - self._pad, self._last_end, 0)))
            return
        if not quiet:
            return
        if self._silence_start is None:
            self._silence_start = start
        if end - self._silence_start < self._min_silence:
            return
        if self._state is _State.SPEECH:
            speech_end = min(self._silence_start + self._pad, end)
            events.append(VADEvent("end", speech_end))
            self._last_end = speech_end
        # A PENDING region that never lasted min_speech_ms is dropped without an event.
        self._state = _State.SILENCE
        self._silence_start = None


class SileroVAD:
    """The shared engine: one ONNX session, a fresh :class:`SileroVADStream` per session."""

    name = "silero"

    def __init__(self, settings: SileroSettings | None = None, model_path: Path | None = None) -> None:
        self.settings = settings or SileroSettings()
        self.settings.validate()
        path = model_path or find_model()
        self.model_name = path.name
        self._model = _SileroModel(path)

    def open_stream(self) -> SileroVADStream:
        return SileroVADStream(self._model, self.settings)

    def speech_regions(self, audio: Audio) -> list[tuple[int, int]]:
        """Offline: the same detector as the streams, over the whole recording."""
        stream = self.open_stream()
        events = stream.accept(audio) + stream.finish()
        regions: list[tuple[int, int]] = []
        start: int | None = None
        for event in events:
            if event.kind == "start":
                start = event.sample
            elif start is not None:
                regions.append((start, event.sample))
                start = None
        return regions

    def speech_probabilities(self, audio: Audio) -> np.ndarray:
        """One probability per 512-sample window (the tail zero-padded); for tuning and tests."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        count = -(-len(audio) // WINDOW)
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(count * WINDOW, dtype=np.float32)
        padded[:len(audio)] = audio
        zeros = np.zeros(STATE_SHAPE, dtype=np.float32)
        probs, _, _ = self._model.run(padded.reshape(count, WINDOW), np.zeros(CONTEXT, np.float32),
                                      zeros, zeros.copy())
        return probs

    def close(self) -> None:
        pass
