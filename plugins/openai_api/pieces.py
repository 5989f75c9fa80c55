"""A file on disk decoded a piece at a time: bounded memory, whatever the file's length.

:class:`PieceReader` pulls decoded audio (soundfile for what libsndfile reads, PyAV/FFmpeg for
the rest), converts it to mono float32 16 kHz with a streaming resampler, and hands out pieces
of at most ``piece_seconds``, each cut at the quietest 100 ms of its last third so that words
are split as rarely as possible. It holds at most one piece plus one decoded block.

Every method blocks: the caller runs :meth:`PieceReader.next_piece` in the inference executor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asrhub.audio import AudioError, to_mono
from asrhub.engine import SAMPLE_RATE, Audio

BLOCK_FRAMES = 16384  # frames per soundfile read (~0.4-1 s)
QUIET_FRAME = SAMPLE_RATE // 10


def quiet_cut(audio: Audio, lo: int, hi: int) -> int:
    """The middle of the quietest 100 ms of ``audio[lo:hi]``."""
    count = (hi - lo) // QUIET_FRAME
    if count < 1:
        return hi
    frames = audio[lo:lo + count * QUIET_FRAME].reshape(count, QUIET_FRAME)
    return lo + int(np.argmin(np.mean(frames * frames, axis=1))) * QUIET_FRAME + QUIET_FRAME // 2


class PieceReader:
    def __init__(self, path: str | Path, piece_seconds: float, *, name: str = "file") -> None:
        self.path = Path(path)
        self.name = name
        self.piece_len = int(piece_seconds * SAMPLE_RATE)
        self.offset = 0  # sample offset (16 kHz) of the next piece
        self.samples = 0  # decoded so far
        self._blocks: Iterator[np.ndarray] | None = None
        self._buffer: list[Audio] = []
        self._buffered = 0
        self._ended = False
        self._container = None

    # ---- decoding

    def open(self) -> None:
        """Check that the file is audio (raises :class:`AudioError`) and start decoding."""
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

    def _sf_blocks(self, rate: int) -> Iterator[np.ndarray]:
        resampler = _resampler(rate)
        with sf.SoundFile(str(self.path)) as fh:
            for block in fh.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                yield _resample(resampler, to_mono(block))
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

    def _av_blocks(self) -> Iterator[np.ndarray]:
        import av

        try:
            container = av.open(str(self.path), mode="r")
        except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
            raise AudioError(f"{self.name}: not a decodable audio file ({exc.__class__.__name__})",
                             "undecodable") from None
        self._container = container
        try:
            if not container.streams.audio:
                raise AudioError(f"{self.name}: the file has no audio stream", "no_audio_stream")
            stream = container.streams.audio[0]
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
            self._container = None

    def _push(self, block: np.ndarray) -> None:
        if len(block):
            if not np.all(np.isfinite(block)):
                raise AudioError(f"{self.name}: audio contains NaN or infinite samples",
                                 "invalid_samples")
            self._buffer.append(np.ascontiguousarray(block, dtype=np.float32))
            self._buffered += len(block)
            self.samples += len(block)

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
            cut = quiet_cut(audio, self.piece_len * 2 // 3, self.piece_len)
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
