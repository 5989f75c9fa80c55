"""The faster-whisper (CTranslate2) speech-recognition engine.

One :class:`WhisperEngine` (one CTranslate2 model) is shared by every session.

Two decoding paths:

- Files (:meth:`WhisperEngine.transcribe`) go through faster-whisper's ``transcribe`` (30 s
  windows, timestamps, word timestamps, temperature fallback, optional VAD filter): the bare
  engine's standard decode. Clips of at most :data:`SHORT_CLIP_S` without word timestamps take
  the utterance path below instead. Audio over :data:`BATCHED_MIN_S` takes faster-whisper's
  batched pipeline when ``file_batch_size`` > 1 (on a GPU by default; see *Batched files*).
- Utterances (:meth:`WhisperEngine.decode`, used by the streams and by
  :meth:`WhisperEngine.transcribe_utterance`) call CTranslate2 directly: one encoder pass, the
  language (when not given) read off that same encoder output, then one greedy/beam decode
  without timestamps. Decodes asked for at the same time by different sessions run as one
  batched call (:mod:`asrhub_plugins.whisper.batching`): finals first, bounded gathering.

Accuracy comes first. The encoder window (audio + at least 3 s of padding, in 5 s steps) is
most of the cost of a short decode, and too short a window costs words: at 10 s (the minimum
before issue 14) Whisper base scored WER 3.9 % on the trustworthy testdata clips against
3.2 % at 30 s, and wrote a sentence twice on a short clip. Finals and files therefore get at
least ``final_window_s`` (15 s: the WER of 30 s for base, better than 30 s for tiny.en, about
a quarter of the encoder cost of 30 s; bench/results/accuracy.md). Only partial hypotheses, replaced a second
later, use the 10 s minimum. A looping, truncated or sentence-repeating decode is run again
with 30 s; a sentence Whisper still repeats at 30 s is kept once
(:func:`~asrhub_plugins.whisper.text.collapse_repeated_sentences`).

A decode without timestamps that stops after its first sentence (:func:`_stopped_early`) is
done again with timestamps, which let Whisper go on from where the sentence ended.

Batched files. Issue 14 asked for a batched pipeline for long files where it beats sequential
decoding on CPU at equal WER; measured (bench/results/file_batching.md, 2 cores, tiny.en):
faster-whisper's :class:`~faster_whisper.BatchedInferencePipeline` took 0.66-0.77x the time of
one sequential decode on every core, at equal or lower WER on the varied files of that bench.
But pieces of a file decoded sequentially side by side, one per decode lane
(:func:`asrhub.pieces.transcribe_file`), are about as fast (0.68-0.80x there, the pipeline in the
hub 0.73-0.74x), and the sequential decoder is the bare engine's own, which the issue's "never
worse than the bare engine's standard decode" asks for: on the long bench recordings the
pipeline was less accurate (WER 3.43 % against 3.06 % on 20.7 min). So on the CPU
``file_batch_size`` is 1 by default, and the pipeline is what a GPU gets (``GPU_FILE_BATCH``). When it runs, much of
its speed comes from what it leaves out, not from
batched encoder passes (on CPU a batch of long windows encodes no faster than one by one, see
:mod:`.batching`): Silero cuts the audio into speech chunks of up to 30 s (no silence decoded,
no 30 s windows re-decoded from the last timestamp) and the decoder writes no timestamp tokens;
the decoder's token steps are shared by a batch (batch 4: 0.77x, 16: 0.66x). With it on:

- English transcription of audio over :data:`BATCHED_MIN_S` (30 s, so that there is something
  to batch: the 20-30 s pieces of the OpenAI API and the file protocol keep the paths above),
  with or without word timestamps, goes through it (word times within 10 ms of the sequential
  path's, median; 30 ms at the 90th percentile). Other languages and the translate task keep
  the sequential decoder: on 52 s of joined Chinese testdata clips Whisper base without
  timestamps skipped whole sentences (CER 37 % batched against 12 % sequential; 26-45 % with
  20 or 15 s chunks or the hub's own plan). ``language`` None is detected first (as
  faster-whisper does: on the first 30 s), then decides the path. A per-call ``prompt``, a fixed
  ``temperature`` or ``condition_on_previous`` (which the pipeline does not support) keep the
  sequential decoder too. The configured ``initial_prompt`` is given to every chunk, as to every
  live utterance.
- Chunks: the pipeline's own Silero pass (speech regions merged up to 30 s), not the hub's speech
  plan (:func:`asrhub.segmenter.plan_pieces` over the VAD engine's regions, passed as
  ``clip_timestamps``): on the 4-minute bench file the hub's plan scored WER 9.1 % against 8.4 %
  (tiny.en), and no faster within the noise of a shared machine (the VAD pass is ~0.5 s of a
  7-10 s decode either way); the pipeline drops the silence inside a chunk, the plan keeps it.
  So the batched path always decodes speech only, whatever ``vad_filter`` says (that setting is
  the sequential path's).
- Each chunk is one segment (its speech span; no timestamp tokens): coarser than the sequential
  path's sentences, which subtitles do not need (they are cut at word timestamps). Asking the
  pipeline for timestamps instead cost words (WER 13.9 % against 8.4 %: it never re-decodes the
  tail after a chunk's last timestamp).
- What the sequential path does and the pipeline does not is done here: a chunk that loops
  (compression ratio > 2.4 or repeated n-grams) is decoded again sequentially with the
  temperature fallback; a chunk Whisper calls silence (no-speech probability > 0.6 and mean
  log-probability < -1) is dropped.
- Live streams first: a batch holds the model (one CTranslate2 call) for all its chunks, so
  while a live decode is running or waiting, or a live stream was in an utterance or asked for
  a decode in the last :data:`LIVE_RECENT_S`, the file goes on one chunk per call
  (:meth:`WhisperEngine.file_batch_now`). Measured stop -> final of a live stream beside a
  long file: bench/results/file_batching.md.

Thread safety: every method may be called from several threads. Utterance decodes from
different threads meet in the batcher; file decodes go to CTranslate2, which runs at most
``num_workers`` calls at once and queues the rest. :attr:`WhisperEngine.busy` tells streams
when the model is occupied so that they can put off a partial result rather than wait.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import structlog

from asrhub.devices import ctranslate2_cuda_devices
from asrhub.engine import (
    SAMPLE_RATE,
    Audio,
    EngineError,
    ProgressCallback,
    Segment,
    Transcript,
    VADEngine,
    VADStream,
    Word,
)
from asrhub.executor import Priority, current_call
from asrhub.text import join_texts
from asrhub_plugins.whisper.batching import DecodeBatcher, DecodeRequest
from asrhub_plugins.whisper.device import Placement, check_supported, place
from asrhub_plugins.whisper.features import BlockFeatureExtractor
from asrhub_plugins.whisper.models import resolve_model
from asrhub_plugins.whisper.settings import WhisperSettings
from asrhub_plugins.whisper.text import (
    ChineseScript,
    collapse_repeated_sentences,
    has_repeated_sentence,
    normalise_language,
)

if TYPE_CHECKING:
    from asrhub_plugins.whisper.stream import WhisperStream

log = structlog.get_logger("asrhub.whisper")

HOP = 160  # samples per mel frame
FULL_WINDOW = 3000  # mel frames in Whisper's 30 s window
MIN_WINDOW = 1000  # shorter windows make Whisper repeat itself (measured: < ~8 s)
WINDOW_PADDING = 300  # at least 3 s of silence after the audio, so the model sees the end
WINDOW_STEP = 500
MAX_SAMPLES = FULL_WINDOW * HOP
MAX_NEW_TOKENS = 224
MAX_LENGTH = 448  # the decoder's positions: prompt + generated tokens
FEATURE_TAIL = SAMPLE_RATE  # silence after the audio whose log-mel frames are computed
SHORT_CLIP_S = 20.0
BATCHED_MIN_S = 30.0  # longer audio may take the batched pipeline (file_batch_size > 1)
GPU_FILE_BATCH = 16  # file_batch_size "auto" on a GPU (on the CPU: 1, the sequential decoder)
LIVE_RECENT_S = 5.0  # a live decode this recent makes file batches one chunk long
# faster-whisper's defaults for dropping silence and detecting loops.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# A batched file chunk (no timestamps) of at least TRUNCATED_MIN_S whose text has fewer words
# per second than this stopped early: Whisper wrote the first sentence and its end token
# (seen: "At that high level, the air is pure." for a 38 s chunk of ~90 words; English speech
# runs at 2-3 words/s). It is decoded again sequentially.
TRUNCATED_WORDS_PER_S = 0.5
TRUNCATED_MIN_S = 8.0
SILENCE_PEAK = 1e-3  # -60 dBFS: quieter audio is not decoded at all


@dataclass
class Decoded:
    """The result of one utterance decode."""

    text: str
    language: str | None  # None only when nothing was decoded (silence, language unknown)
    language_probability: float
    avg_logprob: float
    no_speech_prob: float
    duration: float  # seconds of audio decoded
    window: int  # mel frames the encoder saw
    compute_s: float  # from the call to the result (waiting for the batch included)
    batch_size: int = 1  # decodes in the engine call that made this one
    cancelled: bool = False  # a partial withdrawn before it ran (:class:`PartialTicket`): no text

    @property
    def confidence(self) -> float:
        return float(min(1.0, math.exp(self.avg_logprob)))


class PartialTicket:
    """Lets a stream withdraw its partial decodes (from any thread): :meth:`cancel` withdraws
    the one waiting in the batcher, if any, and makes later ones return at once (cancelled)
    until :meth:`reopen`. :meth:`WhisperEngine.decode` records its request here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: DecodeRequest | None = None
        self._batcher: DecodeBatcher | None = None
        self._closed = False

    def attach(self, batcher: DecodeBatcher, request: DecodeRequest | None) -> bool:
        """Record the request being decoded (None: done); False when cancelled already."""
        with self._lock:
            if request is not None and self._closed:
                return False
            self._batcher, self._request = batcher, request
            return True

    def cancel(self) -> bool:
        """Withdraw the waiting partial (True if there was one) and refuse new ones."""
        with self._lock:
            self._closed = True
            batcher, request = self._batcher, self._request
        return batcher is not None and request is not None and batcher.cancel(request)

    def reopen(self) -> None:
        with self._lock:
            self._closed = False


def decode_workers(configured: int, cuda: bool) -> int:
    """CTranslate2 workers (decodes at once): ``configured``, or 0 = one per usable CPU core
    (at most 8), 1 on a GPU (where one batched call does better than several)."""
    if configured:
        return configured
    if cuda:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def token_budget(duration: float) -> int:
    """New tokens an utterance of ``duration`` seconds may take: more means Whisper loops."""
    return min(MAX_NEW_TOKENS, int(16 + 12 * duration))


def window_frames(samples: int, adaptive: bool = True, minimum: int = MIN_WINDOW) -> int:
    """Encoder window (mel frames) for ``samples`` of audio: the audio + >= 3 s of padding, at
    least ``minimum``, in steps of 5 s; Whisper's 30 s when not ``adaptive``."""
    if not adaptive:
        return FULL_WINDOW
    needed = samples // HOP + 1 + WINDOW_PADDING
    return min(FULL_WINDOW, max(minimum, -(-needed // WINDOW_STEP) * WINDOW_STEP))


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _word_count(text: str) -> float:
    """Words of ``text``: space-separated words, a CJK character (written without spaces, about
    twice as many per second of speech as English words) counting half."""
    cjk = len(_CJK_CHAR.findall(text))
    return len(_CJK_CHAR.sub(" ", text).split()) + cjk / 2


def _stopped_early(text: str, span_s: float) -> bool:
    """A decode without timestamps whose text is too short for its audio (see
    :data:`TRUNCATED_WORDS_PER_S`): Whisper wrote a first sentence and its end token."""
    return span_s >= TRUNCATED_MIN_S and _word_count(text) < TRUNCATED_WORDS_PER_S * span_s


def _repeats_itself(tokens: list[int], max_gram: int = 8) -> bool:
    """Whether some run of 1-8 tokens comes 4 or more times in a row (5 for one token): the
    way Whisper loops when it has lost track of the audio ("5, 5, 5, 5, 5, 5")."""
    for size in range(1, max_gram + 1):
        needed = 5 if size == 1 else 4
        for begin in range(0, len(tokens) - needed * size + 1):
            gram = tokens[begin:begin + size]
            copies = 1
            while tokens[begin + copies * size:begin + (copies + 1) * size] == gram:
                copies += 1
                if copies >= needed:
                    return True
    return False


class WhisperEngine:
    name = "whisper"

    def __init__(
        self,
        settings: WhisperSettings | None = None,
        *,
        state_dir: Path | None = None,
        vad_provider: Callable[[], VADEngine | None] | None = None,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.settings = settings = settings or WhisperSettings()
        settings.validate()
        self.model_name = settings.model
        self.model_path = resolve_model(settings.model, state_dir, settings.cache_dir)
        self.placement = placement = _placement(settings)
        self.device = placement.device
        self.num_workers = decode_workers(settings.num_workers, placement.device.is_cuda)
        self.file_batch_size = settings.file_batch_size or (
            GPU_FILE_BATCH if placement.device.is_cuda else 1)
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                str(self.model_path),  # a Path makes faster-whisper raise TypeError
                device=placement.device.kind,
                device_index=placement.device.index,
                compute_type=placement.compute_type,
                cpu_threads=settings.cpu_threads,
                num_workers=self.num_workers,
                local_files_only=True,
            )
            if placement.device.is_cuda:
                _warm_up_cuda(self._model)
        except (RuntimeError, ValueError, OSError) as exc:
            if not placement.device.is_cuda:
                raise
            raise EngineError(
                f"whisper could not load on {placement.device} ({placement.compute_type}): "
                f"{type(exc).__name__}: {exc}. CTranslate2 on a GPU needs the CUDA 12 cuBLAS "
                "(libcublas.so.12) library (plugins/whisper/README.md: GPU)") from exc
        self.load_s = time.perf_counter() - started
        if placement.device.is_cuda:
            log.info("whisper_on_gpu", device=str(placement.device),
                     compute_type=placement.compute_type, max_batch=placement.batching.max_batch,
                     batch_gather_ms=placement.batching.gather_ms,
                     batch_max_window_s=placement.batching.max_window_s)
        # The same features in bounded memory (long inputs: asrhub_plugins.whisper.features).
        self._model.feature_extractor = BlockFeatureExtractor(**self._model.feat_kwargs)
        if not placement.device.is_cuda:
            self._model.encode = _one_at_a_time(self._model.encode)  # type: ignore[method-assign]
        self._ct2 = self._model.model
        self.multilingual = bool(self._ct2.is_multilingual)
        hf = self._model.hf_tokenizer
        self.supported_languages = [
            code for code in self._model.supported_languages
            if hf.token_to_id(f"<|{code}|>") is not None] if self.multilingual else ["en"]
        self.default_language = normalise_language(settings.language, self.supported_languages)
        self._tokenizer_class = Tokenizer
        self._tokenizers: dict[str, Tokenizer] = {}
        self._suppress = list(get_suppressed_tokens(self._tokenizer("en"), (-1,)) or ())
        self._script = ChineseScript(settings.chinese_script)
        self._prompt_tokens = (self._tokenizer("en").encode(" " + settings.initial_prompt.strip())
                               if settings.initial_prompt.strip() else [])
        self._vad_provider = vad_provider
        self._own_vad: VADEngine | None = None
        self._guard = threading.Lock()
        self._inflight = 0
        self._live_at = -math.inf  # perf_counter of the last live decode asked for
        self.decodes = 0
        self.decode_seconds = 0.0
        self.batched_chunks = 0  # speech chunks decoded by the batched file pipeline
        self._eot = self._tokenizer("en").eot
        batching = placement.batching  # the CPU settings, or their gpu_ twins on a GPU
        self.batcher = DecodeBatcher(
            self._run_batch, max_batch=batching.max_batch,
            gather_s=batching.gather_ms / 1000,
            max_window=int(batching.max_window_s * SAMPLE_RATE / HOP),
            concurrency=self.num_workers)

    # ------------------------------------------------------------------ helpers

    def _tokenizer(self, language: str):  # -> faster_whisper.tokenizer.Tokenizer
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            tokenizer = self._tokenizer_class(self._model.hf_tokenizer, self.multilingual,
                                              task="transcribe", language=language)
            self._tokenizers[language] = tokenizer
        return tokenizer

    def resolve_language(self, language: str | None) -> str | None:
        """The language to decode in: the argument, else the configured one; None = detect."""
        if not self.multilingual:
            normalise_language(language, self.supported_languages)  # rejects non-English
            return "en"
        if language is None:
            return self.default_language
        return normalise_language(language, self.supported_languages)

    @property
    def busy(self) -> bool:
        """The model is occupied (a batch running or waiting, or every CTranslate2 worker
        taken by files): a new decode would queue."""
        return self.batcher.busy or self._inflight >= self.num_workers

    @contextlib.contextmanager
    def _running(self, decodes: int = 1) -> Iterator[None]:
        with self._guard:
            self._inflight += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._guard:
                self._inflight -= 1
                self.decodes += decodes
                self.decode_seconds += time.perf_counter() - started

    def _vad_engine(self) -> VADEngine:
        engine = self._vad_provider() if self._vad_provider is not None else None
        if engine is not None:
            return engine
        with self._guard:
            if self._own_vad is None:
                self._own_vad = _registered_vad()
            return self._own_vad

    # ------------------------------------------------------------------ utterances

    def decode(self, audio: Audio, language: str | None, *, previous_text: str = "",
               window: int | None = None, partial: bool = False,
               ticket: PartialTicket | None = None) -> Decoded:
        """Recognise one utterance (at most 30 s; longer audio is cut). ``language`` None
        detects it from the same encoder pass. ``partial``: a hypothesis that a later decode
        replaces, which may use a shorter window (``adaptive_window``); otherwise (finals,
        files) Whisper's 30 s window. ``window`` forces a window (mel frames). Thread-safe:
        concurrent calls are batched."""
        started = time.perf_counter()
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)[:MAX_SAMPLES]
        duration = len(audio) / SAMPLE_RATE
        exact = window is not None
        if window is None:
            window = (window_frames(len(audio), self.settings.adaptive_window) if partial
                      else self.final_window(len(audio)))
        if not len(audio) or float(np.max(np.abs(audio))) < SILENCE_PEAK:
            # Whisper "hears" words in digital silence ("you"); nothing to decode.
            return Decoded("", language, 0.0, 0.0, 1.0,
                           duration, window, time.perf_counter() - started)
        if not self.multilingual:
            language = "en"
        previous = previous_text.strip()
        call = current_call()
        if call is None or call.priority is Priority.LIVE:
            self.note_live()
        request = DecodeRequest(
            features=self._features(audio, window), window=window, language=language,
            previous=self._previous_prompt(previous), budget=token_budget(duration),
            final=not partial or exact,  # a forced window (a retry) is urgent
            live=call is None or call.priority is Priority.LIVE,
            flow=call.flow if call is not None else "")
        if ticket is not None and not ticket.attach(self.batcher, request):
            request.cancelled = True
        else:
            try:
                self.batcher.submit(request)
            finally:
                if ticket is not None:
                    ticket.attach(self.batcher, None)
        if request.cancelled:
            return Decoded("", language, 0.0, -10.0, 1.0, duration, window,
                           time.perf_counter() - started, cancelled=True)
        tokens = request.tokens
        language = request.language
        assert language is not None
        tokenizer = self._tokenizer(language)
        text = tokenizer.decode(tokens).strip()
        avg_logprob = (request.score * len(tokens)) / (len(tokens) + 1) if tokens else -10.0
        looping = (len(tokens) >= request.budget or _repeats_itself(tokens)
                   or _compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
                   or has_repeated_sentence(text))
        if looping and request.window_used < FULL_WINDOW:
            log.debug("whisper_window_retry", window=request.window_used, tokens=len(tokens))
            retried = self.decode(audio, language, previous_text=previous_text,
                                  window=FULL_WINDOW)
            retried.compute_s = time.perf_counter() - started
            return retried
        text = collapse_repeated_sentences(text)
        if request.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
            text = ""
        elif not partial and _stopped_early(text, duration):
            redone = self._decode_sequentially(audio, language, previous, started)
            redone.language_probability = float(request.language_probability)
            return redone
        return Decoded(
            text=self._script.apply(text, language),
            language=language,
            language_probability=float(request.language_probability),
            avg_logprob=float(avg_logprob),
            no_speech_prob=float(request.no_speech_prob),
            duration=duration,
            window=request.window_used,
            compute_s=time.perf_counter() - started,
            batch_size=request.batch_size,
        )

    def _decode_sequentially(self, audio: Audio, language: str, previous: str,
                             started: float) -> Decoded:
        """An utterance whose decode stopped early (see :func:`_stopped_early`), decoded again as
        files are: 30 s windows with timestamps, so that Whisper goes on after the timestamp
        of the sentence it ended at (seen: a 20 s file piece of five sentences came back as the
        first one only; bench/results/accuracy.md)."""
        log.debug("whisper_utterance_redone", duration=round(len(audio) / SAMPLE_RATE, 2))
        with self._running():
            pieces, _ = self._model.transcribe(
                audio, language=language, beam_size=self.settings.beam_size,
                condition_on_previous_text=False,
                initial_prompt=previous or self.settings.initial_prompt or None)
            found = [piece for piece in pieces
                     if not (piece.no_speech_prob > NO_SPEECH_THRESHOLD
                             and piece.avg_logprob < LOGPROB_THRESHOLD)]
        text = join_texts([collapse_repeated_sentences(piece.text.strip()) for piece in found])
        avg_logprob = float(np.mean([piece.avg_logprob for piece in found])) if found else -10.0
        return Decoded(
            text=self._script.apply(text, language), language=language, language_probability=0.0,
            avg_logprob=avg_logprob,
            no_speech_prob=float(min((piece.no_speech_prob for piece in found), default=1.0)),
            duration=len(audio) / SAMPLE_RATE, window=FULL_WINDOW,
            compute_s=time.perf_counter() - started)

    def final_window(self, samples: int) -> int:
        """The encoder window of a final (or file) decode of ``samples`` of audio."""
        minimum = -(-int(self.settings.final_window_s * SAMPLE_RATE / HOP) // WINDOW_STEP) * WINDOW_STEP
        return window_frames(samples, self.settings.adaptive_window, max(MIN_WINDOW, minimum))

    def _previous_prompt(self, previous_text: str) -> list[int]:
        """``[sot_prev, *tokens]`` of the previous text (or the initial prompt), or []."""
        # Token ids of text do not depend on the language token: any tokenizer will do.
        previous = self._tokenizer("en").encode(" " + previous_text) if previous_text else []
        previous = previous or self._prompt_tokens
        if not previous:
            return []
        return [self._tokenizer("en").sot_prev, *previous[-(MAX_NEW_TOKENS - 1):]]

    def _features(self, audio: Audio, window: int) -> np.ndarray:
        """Log-mel frames of ``audio`` padded with silence to ``window`` frames, exactly as
        faster-whisper computes them (``feature_extractor(audio, padding=window * HOP)``) but
        without the cost of a 30 s spectrogram for a 3 s clip: every frame of the padding is
        the same value (silence, clamped to the loudest frame - 8), so the spectrogram is
        computed over the audio and 1 s of silence, and the rest is that value (tested)."""
        tail = min(window * HOP, FEATURE_TAIL)
        frames = self._model.feature_extractor(audio, padding=tail)
        if tail == window * HOP:
            return frames[:, :window]
        exact = min(window, (len(audio) + tail) // HOP - 8)  # clear of the last STFT frames
        out = np.empty((frames.shape[0], window), dtype=np.float32)
        out[:, :exact] = frames[:, :exact]
        out[:, exact:] = frames[:, -1:]  # a frame of silence only
        return out

    def _run_batch(self, batch: list[DecodeRequest]) -> None:
        """One engine call for every request of ``batch`` (see :mod:`.batching`): fills in
        tokens, scores, language. Each request gets at most its own token budget, so its
        text is what it would be alone."""
        import ctranslate2

        window = batch[0].window  # the batcher groups requests by window
        features = np.ascontiguousarray(np.stack([r.features for r in batch]), dtype=np.float32)
        with self._running(len(batch)):
            encoded = self._ct2.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
            if any(r.language is None for r in batch):
                for request, found in zip(batch, self._ct2.detect_language(encoded), strict=True):
                    if request.language is None:
                        token, request.language_probability = found[0]
                        request.language = token[2:-2]
            prompts = []
            for request in batch:
                tokenizer = self._tokenizer(request.language or "en")
                prompts.append([*request.previous, *tokenizer.sot_sequence,
                                tokenizer.no_timestamps])
            # max_length counts the prompt; CTranslate2 may stop a little short of it, so
            # leave room for twice the budget (every row is cut to its own budget below).
            longest = max(r.budget for r in batch)
            results = self._ct2.generate(
                encoded, prompts,
                beam_size=self.settings.beam_size,
                max_length=min(MAX_LENGTH, len(prompts[0]) + 2 * longest + 2),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=self._suppress,
            )
        for request, result in zip(batch, results, strict=True):
            tokens = [t for t in result.sequences_ids[0] if t < self._eot]
            request.tokens = tokens[:request.budget]
            request.score = float(result.scores[0]) if result.scores else 0.0
            request.no_speech_prob = float(result.no_speech_prob)
            request.window_used = window

    def transcribe_utterance(self, audio: Audio, language: str | None = None, *,
                             previous_text: str = "") -> Decoded:
        """One short recording (push-to-talk, a voice command): the cheap path, no timestamps.
        ``language`` None = the configured default ("auto" detects). Over 30 s, the file path."""
        lang = self.resolve_language(language)
        if len(audio) <= MAX_SAMPLES:
            return self.decode(audio, lang, previous_text=previous_text)
        started = time.perf_counter()
        transcript = self.transcribe(audio, language=lang)
        confidences = [s.confidence for s in transcript.segments if s.confidence]
        return Decoded(transcript.text, transcript.language, 1.0,
                       float(np.mean(np.log(confidences))) if confidences else -10.0, 0.0,
                       transcript.duration, FULL_WINDOW, time.perf_counter() - started)

    # ------------------------------------------------------------------ files

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
        """``task="translate"``: English text (Whisper's translate task; an English-only model
        transcribes). ``prompt``: the initial prompt (instead of ``initial_prompt``).
        ``temperature``: one sampling temperature; None or 0 = faster-whisper's fallback
        schedule (0.0, 0.2, ... 1.0)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        lang = self.resolve_language(language)
        duration = len(audio) / SAMPLE_RATE
        plain = task == "transcribe" and not prompt and not temperature
        if duration <= SHORT_CLIP_S and not word_timestamps and not self.settings.vad_filter and plain:
            decoded = self.decode(audio, lang)  # a final: the full window
            segments = ([Segment(0.0, duration, decoded.text, confidence=decoded.confidence)]
                        if decoded.text else [])
            if progress is not None:
                progress(1.0)
            return Transcript(decoded.text, decoded.language, duration, segments)
        if (self.file_batch_size > 1 and duration > BATCHED_MIN_S and not prompt
                and not temperature and not self.settings.condition_on_previous
                and (task == "transcribe" or not self.multilingual)):
            if lang is None:
                # Detected here as faster-whisper would (its first 30 s), once for either path.
                with self._running():
                    lang = self._model.detect_language(audio)[0]
            if lang == "en":
                return self._transcribe_batched(audio, lang, word_timestamps=word_timestamps,
                                                progress=progress, task=task)
        with self._running():
            pieces, info = self._model.transcribe(
                audio,
                language=lang,
                beam_size=self.settings.beam_size,
                word_timestamps=word_timestamps,
                vad_filter=self.settings.vad_filter,
                initial_prompt=prompt or self.settings.initial_prompt or None,
                task=task,
                **({"temperature": temperature} if temperature else {}),
                # Conditioning on the previous window's text can make Whisper skip whole
                # windows (seen on a repeated passage); off unless configured.
                condition_on_previous_text=self.settings.condition_on_previous,
            )
            segments = []
            for piece in pieces:
                segments.append(self._segment(piece, info.language, duration))
                if progress is not None and duration > 0:
                    progress(min(1.0, piece.end / duration))
        if progress is not None:
            progress(1.0)
        return Transcript(join_texts([s.text for s in segments]), info.language, duration, segments)

    def note_live(self) -> None:
        """A live stream is in an utterance (its final will be asked for): see
        :meth:`file_batch_now`. Live decodes note themselves."""
        self._live_at = time.perf_counter()

    def file_batch_now(self) -> int:
        """Speech chunks the next batched file call may hold: ``file_batch_size``, or 1 while
        a live decode runs or waits, or a live stream was in an utterance or asked for a decode
        in the last :data:`LIVE_RECENT_S`."""
        if self.batcher.busy or time.perf_counter() - self._live_at < LIVE_RECENT_S:
            return 1
        return self.file_batch_size

    def _transcribe_batched(self, audio: Audio, language: str | None, *, word_timestamps: bool,
                            progress: ProgressCallback | None,
                            task: Literal["transcribe", "translate"]) -> Transcript:
        """Audio over :data:`BATCHED_MIN_S` through faster-whisper's batched pipeline (see the
        module docstring): speech chunks of up to 30 s, one segment each."""
        duration = len(audio) / SAMPLE_RATE
        prompt = self.settings.initial_prompt.strip()
        pipeline = _live_first_pipeline()(self._model, self.file_batch_now, self.num_workers)
        segments: list[Segment] = []
        with self._running():
            pieces, info = pipeline.transcribe(
                audio,
                language=language,
                task=task,
                beam_size=self.settings.beam_size,
                word_timestamps=word_timestamps,
                without_timestamps=True,
                initial_prompt=" " + prompt if prompt else None,
                batch_size=self.file_batch_size,
                vad_filter=True,
                condition_on_previous_text=False,
            )
            for piece in pieces:
                self.batched_chunks += 1  # one segment per chunk (no timestamp tokens)
                if (piece.no_speech_prob > NO_SPEECH_THRESHOLD
                        and piece.avg_logprob < LOGPROB_THRESHOLD):
                    continue  # Whisper's own verdict: silence (the sequential path drops it too)
                if (piece.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                        or _repeats_itself(list(piece.tokens))
                        or _stopped_early(piece.text, piece.end - piece.start)):
                    segments += self._redo_sequentially(audio, piece.start, piece.end,
                                                        info.language, word_timestamps, task)
                else:
                    segments.append(self._segment(piece, info.language, duration))
                if progress is not None and duration > 0:
                    progress(min(1.0, piece.end / duration))
        if progress is not None:
            progress(1.0)
        return Transcript(join_texts([s.text for s in segments]), info.language, duration,
                          [s for s in segments if s.text])

    def _redo_sequentially(self, audio: Audio, start: float, end: float, language: str,
                           word_timestamps: bool,
                           task: Literal["transcribe", "translate"]) -> list[Segment]:
        """A chunk the batched pipeline looped on, decoded again as the sequential path does
        (timestamps, temperature fallback); times absolute."""
        log.debug("whisper_batched_chunk_redone", start=start, end=end)
        first = max(0, int(start * SAMPLE_RATE))
        part = audio[first:int(end * SAMPLE_RATE)]
        pieces, _ = self._model.transcribe(
            part, language=language, task=task, beam_size=self.settings.beam_size,
            word_timestamps=word_timestamps, condition_on_previous_text=False,
            initial_prompt=self.settings.initial_prompt or None)
        offset = first / SAMPLE_RATE
        duration = len(audio) / SAMPLE_RATE
        return [self._segment(piece, language, duration, offset) for piece in pieces]

    def _segment(self, piece, language: str, duration: float,  # piece: faster_whisper Segment
                 offset: float = 0.0) -> Segment:
        """A faster-whisper segment as the hub's: repeated sentences once, the configured
        Chinese script, times moved by ``offset`` and clipped to ``duration`` (Whisper may place
        the last timestamp at the end of its 30 s window)."""
        text = self._script.apply(collapse_repeated_sentences(piece.text.strip()), language)
        words = [Word(min(w.start + offset, duration), min(w.end + offset, duration),
                      self._script.apply(w.word, language), w.probability)
                 for w in piece.words or ()]
        return Segment(min(piece.start + offset, duration), min(piece.end + offset, duration),
                       text, words, confidence=float(min(1.0, math.exp(piece.avg_logprob))))

    # ------------------------------------------------------------------ streaming

    def open_stream(self, *, language: str | None = None, vad: VADStream | None = None) -> WhisperStream:
        """A streaming session. ``vad`` segments utterances (this stream feeds it: the caller
        must not); None = a Silero stream of this engine's own."""
        from asrhub_plugins.whisper.stream import WhisperStream

        lang = self.resolve_language(language)
        if vad is None:
            vad = self._vad_engine().open_stream()
        return WhisperStream(self, lang, vad)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ct2.unload_model()


def _one_at_a_time(encode: Callable[[np.ndarray], object]) -> Callable[[np.ndarray], object]:
    """faster-whisper's encoder call (its files' 30 s windows), one call at a time.

    On the CPU a 30 s encoder pass holds ~80 MB of attention buffers while it runs (tiny.en;
    measured: two passes at once, +160 MB), so file pieces decoded side by side (one per decode
    lane) set the peak memory whenever their encoder passes meet. Taking turns here keeps that to
    one pass while the decoders still run side by side: `asrhub transcribe` of the 20.7-min bench
    file, two lanes, one malloc arena: peak RSS 436 -> 375 MB for 24.5 -> 26.7 s
    (bench/results/long_file.md). Live decodes call CTranslate2 directly (the batcher) and do not
    wait here, except the rare redo of one that stopped early (:meth:`WhisperEngine._decode_sequentially`)."""
    turn = threading.Lock()

    def encode_in_turn(features: np.ndarray) -> object:
        with turn:
            return encode(features)
    return encode_in_turn


@functools.cache
def _live_first_pipeline():  # -> type[faster_whisper.BatchedInferencePipeline], built lazily
    from faster_whisper import BatchedInferencePipeline

    class LiveFirstPipeline(BatchedInferencePipeline):
        """faster-whisper's batched pipeline, whose batches shrink while live streams decode:
        ``batch_now()`` is asked before each engine call how many chunks it may hold. With
        several CTranslate2 workers (``lanes``; one thread each) and no live stream, a batch is
        split across them and its parts run side by side, so one file still uses every core
        (not with word timestamps: faster-whisper keeps state between their batches)."""

        def __init__(self, model, batch_now: Callable[[], int], lanes: int = 1) -> None:
            super().__init__(model)
            self._batch_now = batch_now
            self._lanes = max(1, lanes)

        def forward(self, features, tokenizer, chunks_metadata, options):
            results: list = []
            done = 0
            while done < len(features):
                size = max(1, self._batch_now())
                part_features = features[done:done + size]
                part_meta = chunks_metadata[done:done + size]
                lanes = min(self._lanes, len(part_features))
                if lanes > 1 and size > 1 and not options.word_timestamps:
                    results += self._side_by_side(part_features, tokenizer, part_meta, options, lanes)
                else:
                    results += super().forward(part_features, tokenizer, part_meta, options)
                done += size
            return results

        def _side_by_side(self, features, tokenizer, chunks_metadata, options, lanes: int) -> list:
            from concurrent.futures import ThreadPoolExecutor

            step = -(-len(features) // lanes)
            parts = [(features[i:i + step], chunks_metadata[i:i + step])
                     for i in range(0, len(features), step)]
            forward = super().forward
            with ThreadPoolExecutor(len(parts), thread_name_prefix="asrhub-file-lane") as pool:
                outputs = list(pool.map(lambda part: forward(part[0], tokenizer, part[1], options),
                                        parts))
            return [item for output in outputs for item in output]

    return LiveFirstPipeline


def _placement(settings: WhisperSettings) -> Placement:
    """Device, compute type and batching (:mod:`.device`), checked against what this
    CTranslate2 supports there before the model is loaded."""
    import ctranslate2

    placement = place(settings, ctranslate2_cuda_devices())
    supported = ctranslate2.get_supported_compute_types(placement.device.kind,
                                                        placement.device.index)
    check_supported(placement, supported)
    return placement


def _warm_up_cuda(model) -> None:  # model: faster_whisper.WhisperModel
    """One encoder pass at load: CTranslate2 loads cuBLAS on first use, so a missing
    library fails here, at start-up, rather than in the first session."""
    import ctranslate2

    frames = np.zeros((1, model.model.n_mels, MIN_WINDOW), dtype=np.float32)
    model.model.encode(ctranslate2.StorageView.from_array(frames), to_cpu=True)


def _registered_vad() -> VADEngine:
    """The registered Silero VAD engine (or the first VAD registered), for an engine used
    without a hub: found through the plugin hooks, as the hub finds it."""
    from asrhub.engine import EngineError
    from asrhub.plugins import make_plugin_manager

    specs = {spec.name: spec
             for group in make_plugin_manager().hook.asrhub_register_vad_engines()
             for spec in group}
    if not specs:
        raise EngineError("streaming needs a VAD engine and none is installed")
    spec = specs.get("silero") or next(iter(specs.values()))
    engine: VADEngine = spec.factory(spec.settings_class(), None)
    return engine
