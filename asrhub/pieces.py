"""Long files in bounded memory: a file on disk decoded and recognised a piece at a time.

:class:`PieceReader` pulls decoded audio (soundfile blocks for what libsndfile reads, PyAV/FFmpeg
frames for the rest), converts it to mono float32 16 kHz with soxr's streaming resampler (as
:class:`asrhub.audio.PcmStream` and :mod:`asrhub.container_stream` do), and hands out pieces of
at most ``piece_seconds``, each cut at the quietest 100 ms of its last third so that words are
split as rarely as possible. It holds at most one piece plus one decoded block:
:attr:`PieceReader.peak_samples` is the high-water mark, which tests assert on.

:func:`transcribe_file` runs any :class:`~asrhub.engine.ASREngine` over those pieces (one
``engine.transcribe`` call each, timestamps offset by the piece's start, the language detected
on the first piece with speech and then kept), handing each segment out as it is produced.
That is the whole streaming file interface: no engine needs a method of its own for it, and
memory is O(piece) whatever the file's length. Measured against faster-whisper over the whole
array (which computes the log-mel spectrogram of the entire file at once: about 3 GB per hour of
audio), see ``bench/long_file.py``.

Why pieces cut at quiet points rather than the engine's own windowing over a lazily decoded
file: Whisper's features are clamped to the loudest frame of the whole input minus 8 dB, so
"the same as the whole-file decode" would need the whole file (or a first pass) anyway, and
pieces cut in pauses are never worse than Whisper's own 30 s windows cut at its timestamps
(tests/test_long_files.py measures the WER of both on the same file).

Every method blocks; the server runs them in the inference executor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import soxr

from asrhub.audio import AudioError, open_av, probe_duration, to_mono
from asrhub.engine import SAMPLE_RATE, ASREngine, Audio, ProgressCallback, Segment, Transcript, Word
from asrhub.heap import HeapTrimmer
from asrhub.segmenter import quietest_point
from asrhub.text import join_texts

BLOCK_FRAMES = 16384  # frames per soundfile read (~0.4-1 s)
# `asrhub transcribe`'s pieces. Measured with tiny.en on a 347 s file (bench/long_file.py's
# recordings): whole file WER 2.6 %, peak RSS +233 MB over idle; 120 s pieces 3.1 %, +81 MB;
# 30 s pieces 3.9 %, +30 MB and 1.4x the time (faster-whisper decodes each piece's tail as a
# window of its own). Fewer piece edges means fewer places where Whisper's seek differs, and
# fewer short last windows encoded as full 30 s ones (about one per piece: up to ~20 % more
# encoder work at 120 s; bench/results/long_file.md).
FILE_PIECE_S = 120.0
SILENCE_PEAK = 1e-3  # -60 dBFS: a piece this quiet is not sent to the engine


class PieceReader:
    """Decode ``path`` incrementally into pieces of at most ``piece_seconds`` (see the module)."""

    def __init__(self, path: str | Path, piece_seconds: float, *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.piece_len = int(piece_seconds * SAMPLE_RATE)
        self.offset = 0  # sample offset (16 kHz) of the next piece
        self.samples = 0  # decoded so far
        self.peak_samples = 0  # the most decoded audio held at once (high-water mark)
        self._blocks: Iterator[np.ndarray] | None = None
        self._buffer: list[Audio] = []
        self._buffered = 0
        self._ended = False

    def __enter__(self) -> PieceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, Audio]]:
        while (got := self.next_piece()) is not None:
            yield got

    # ---- decoding

    def open(self) -> None:
        """Check that the file is audio (raises :class:`AudioError`) and start decoding."""
        if not self.path.is_file():
            raise AudioError(f"{self.name}: no such file", "not_found")
        try:
            info = sf.info(str(self.path))
        except Exception:  # noqa: BLE001 - not a libsndfile format: FFmpeg
            self._blocks = self._av_blocks()
        else:
            if info.frames <= 0 or info.samplerate <= 0:
                raise AudioError(f"{self.name}: holds no audio samples", "empty")
            self._blocks = self._sf_blocks(info.samplerate)
        first = next(self._blocks, None)
        if first is None:
            raise AudioError(f"{self.name}: holds no audio samples", "empty")
        self._push(first)

    def duration(self) -> float | None:
        """Seconds of audio in the file as its headers say (None when they do not)."""
        try:
            return probe_duration(self.path)
        except AudioError:
            return None

    def _sf_blocks(self, rate: int) -> Iterator[np.ndarray]:
        resampler = _resampler(rate)
        with sf.SoundFile(str(self.path)) as fh:
            for block in fh.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                yield _resample(resampler, to_mono(block))
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

    def _av_blocks(self) -> Iterator[np.ndarray]:
        import av  # lazily: FFmpeg's libraries are large

        container, stream = open_av(str(self.path), self.name)
        try:
            rate = stream.codec_context.sample_rate or SAMPLE_RATE
            # FFmpeg only converts the sample format and downmixes; soxr resamples.
            converter = av.AudioResampler(format="flt", layout="mono", rate=rate)
            resampler = _resampler(rate)
            decoded = 0
            try:
                for frame in container.decode(stream):
                    for out in converter.resample(frame):
                        mono = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                        decoded += len(mono)
                        yield _resample(resampler, mono)
                for out in converter.resample(None):
                    yield _resample(resampler, out.to_ndarray().reshape(-1).astype(np.float32))
            except av.error.FFmpegError as exc:
                if not decoded:
                    raise AudioError(f"{self.name}: the audio stream could not be decoded ({exc})",
                                     "undecodable") from None
                # A damaged tail: what was decoded stands.
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        finally:
            container.close()

    def _push(self, block: np.ndarray) -> None:
        if len(block):
            if not np.all(np.isfinite(block)):
                raise AudioError(f"{self.name}: audio contains NaN or infinite samples",
                                 "invalid_samples")
            self._buffer.append(np.ascontiguousarray(block, dtype=np.float32))
            self._buffered += len(block)
            self.samples += len(block)
            self.peak_samples = max(self.peak_samples, self._buffered)

    # ---- pieces

    def next_piece(self) -> tuple[int, Audio] | None:
        """(sample offset, audio) of the next piece, or None at the end of the file."""
        if self._blocks is None:
            self.open()
        assert self._blocks is not None
        while not self._ended and self._buffered < self.piece_len:
            block = next(self._blocks, None)
            if block is None:
                self._ended = True
            else:
                self._push(block)
        if not self._buffered:
            return None
        audio = self._buffer[0] if len(self._buffer) == 1 else np.concatenate(self._buffer)
        if self._ended and len(audio) <= self.piece_len:
            cut = len(audio)
        else:
            cut = quietest_point(audio, self.piece_len * 2 // 3, self.piece_len)
        piece, rest = audio[:cut], audio[cut:]
        self._buffer = [rest] if len(rest) else []
        self._buffered = len(rest)
        start = self.offset
        self.offset += len(piece)
        return start, np.ascontiguousarray(piece)

    def close(self) -> None:
        if self._blocks is not None:
            close = getattr(self._blocks, "close", None)
            if close is not None:
                try:
                    close()  # runs the generator's finally: the container is closed
                except ValueError:
                    pass  # a worker is inside it (the request was cancelled): it ends on its own
        self._buffer, self._buffered = [], 0


def _resampler(rate: int) -> soxr.ResampleStream | None:
    if rate == SAMPLE_RATE:
        return None
    return soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")


def _resample(resampler: soxr.ResampleStream | None, mono: np.ndarray) -> np.ndarray:
    return mono if resampler is None else resampler.resample_chunk(mono)


# ----------------------------------------------------------------------- recognition


def shift_segment(seg: Segment, offset: float, **changes: Any) -> Segment:
    """``seg`` with its times (and its words' times) moved by ``offset`` seconds."""
    fields: dict[str, Any] = {
        "start": seg.start + offset, "end": seg.end + offset, "text": seg.text,
        "words": [Word(w.start + offset, w.end + offset, w.word, w.probability) for w in seg.words],
        "speaker": seg.speaker, "confidence": seg.confidence}
    fields.update(changes)
    return Segment(**fields)


def transcribe_file(
    engine: ASREngine,
    reader: PieceReader,
    *,
    language: str | None = None,
    word_timestamps: bool = False,
    progress: ProgressCallback | None = None,
    on_segment: Callable[[Segment], None] | None = None,
    task: Literal["transcribe", "translate"] = "transcribe",
    prompt: str | None = None,
    temperature: float | None = None,
    lanes: int = 1,
) -> Transcript:
    """Recognise the file ``reader`` decodes, one ``engine.transcribe`` call per piece.

    Segment times are absolute (seconds from the start of the file); ``on_segment`` gets each
    segment with text, in order, as soon as its piece and those before it are done.
    ``language`` None: detected on the first piece with speech, then kept for the rest (as a
    whole-file decode does). ``progress`` gets the fraction of the file done (by the duration
    its headers give, when they give one).

    ``lanes`` > 1: that many pieces are recognised side by side (an engine that decodes several
    calls at once, such as Whisper with a CTranslate2 worker per core, one thread each, uses
    every core this way; one decode with every core on it is slower, bench/results/long_file.md),
    while the next piece is read. The first piece with speech runs alone while the language is
    being detected. At most ``lanes`` pieces are held besides the one being read.
    """
    lanes = max(1, lanes)
    total = reader.duration()
    trimmer = HeapTrimmer()
    segments: list[Segment] = []
    detected: str | None = None
    pending: deque[tuple[float, float, Future[Transcript] | None]] = deque()

    def report(done_s: float) -> None:
        if progress is not None and total:
            progress(min(1.0, done_s / total))

    def finish_oldest() -> None:
        nonlocal detected, language
        start, span, future = pending.popleft()
        if future is not None:
            part = future.result()
            if part.text.strip() and part.language:
                detected = detected or part.language
                if language is None and task == "transcribe":
                    language = part.language
            for seg in part.segments:
                if seg.text.strip():
                    placed = shift_segment(seg, start)
                    segments.append(placed)
                    if on_segment is not None:
                        on_segment(placed)
        report(start + span)
        trimmer.maybe_trim()  # the piece's buffers back to the system (asrhub.heap)

    with ThreadPoolExecutor(lanes, thread_name_prefix="asrhub-piece") as pool:
        for offset, audio in reader:
            start = offset / SAMPLE_RATE
            span = len(audio) / SAMPLE_RATE
            future: Future[Transcript] | None = None
            if len(audio) and float(np.max(np.abs(audio))) >= SILENCE_PEAK:
                while pending and (len(pending) >= lanes
                                   or (language is None and task == "transcribe")):
                    finish_oldest()  # a free lane, or the language the next piece needs

                def piece_progress(fraction: float, start: float = start, span: float = span) -> None:
                    report(start + fraction * span)

                future = pool.submit(
                    engine.transcribe, audio, language=language, word_timestamps=word_timestamps,
                    progress=piece_progress if lanes == 1 else None, task=task, prompt=prompt,
                    temperature=temperature)
            pending.append((start, span, future))
            while pending and (pending[0][2] is None or pending[0][2].done()):
                finish_oldest()
        while pending:
            finish_oldest()
    if progress is not None:
        progress(1.0)
    return Transcript(join_texts([s.text for s in segments]), detected or language,
                      reader.samples / SAMPLE_RATE, segments)
