"""The audio edge: every wire and file format becomes mono float32 16 kHz here, once.

Containers (wav, flac, ogg, mp3, mp4/m4a, aac, opus, webm, ...) are decoded with soundfile when
it can and PyAV (FFmpeg) otherwise; resampling uses soxr. Everything that is not valid audio
raises :class:`AudioError` with a message a client can be shown.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asrhub.engine import SAMPLE_RATE, Audio

# Container formats the hub accepts for files (by extension).
FILE_EXTENSIONS = ("wav", "mp3", "mp4", "m4a", "flac", "aac", "ogg", "opus", "webm", "oga", "wma", "amr")


class AudioError(ValueError):
    """The bytes are not usable audio; ``reason`` is a short machine-readable tag."""

    def __init__(self, message: str, reason: str = "invalid_audio") -> None:
        super().__init__(message)
        self.reason = reason


def _finite(audio: Audio) -> Audio:
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or infinite samples", "invalid_samples")
    return audio


def to_mono(samples: np.ndarray) -> Audio:
    """(n,) or (n, channels) of any float/int dtype → mono float32 in [-1, 1]."""
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        scale = float(max(abs(info.min), info.max))
        samples = samples.astype(np.float32) / scale
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(audio: Audio, rate: int, target: int = SAMPLE_RATE) -> Audio:
    if rate == target:
        return audio.astype(np.float32, copy=False)
    if len(audio) == 0:
        return audio.astype(np.float32)
    return soxr.resample(audio, rate, target, quality="HQ").astype(np.float32, copy=False)


# ----------------------------------------------------------------------- wire formats


def pcm16le_to_float(data: bytes | bytearray | memoryview) -> Audio:
    """Raw PCM int16 little-endian mono → float32."""
    if len(data) % 2:
        raise AudioError(f"PCM int16 needs an even number of bytes, got {len(data)}", "odd_length")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float32le_to_float(data: bytes | bytearray | memoryview) -> Audio:
    """Raw PCM float32 little-endian mono → float32 (checked for NaN/inf)."""
    if len(data) % 4:
        raise AudioError(f"PCM float32 needs a multiple of 4 bytes, got {len(data)}", "odd_length")
    audio = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return _finite(audio)


def b64_pcm16_to_float(text: str) -> Audio:
    """Base64 text of PCM int16 LE → float32."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AudioError("audio data is not valid base64", "invalid_base64") from None
    return pcm16le_to_float(raw)


def float_to_pcm16(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class PcmStream:
    """Raw interleaved PCM of any rate, sample width and channel count, chunk by chunk → mono
    float32 16 kHz. soxr keeps its filter state between chunks (no clicks at chunk edges); a
    chunk that ends inside a frame keeps those bytes for the next one.

    Widths are the WAV conventions: 1 = unsigned 8-bit, 2/3/4 = signed 16/24/32-bit little
    endian (Wyoming's ``audio-chunk`` uses the same).
    """

    MAX_RATE = 384_000
    MAX_CHANNELS = 32

    def __init__(self, rate: int, width: int, channels: int) -> None:
        for name, value in (("rate", rate), ("width", width), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise AudioError(f"{name} must be an integer, got {value!r}", "invalid_format")
        if not 1000 <= rate <= self.MAX_RATE:
            raise AudioError(f"sample rate {rate} Hz is not supported (1000-{self.MAX_RATE})",
                             "invalid_format")
        if width not in (1, 2, 3, 4):
            raise AudioError(f"sample width {width} is not supported (1, 2, 3 or 4 bytes)",
                             "invalid_format")
        if not 1 <= channels <= self.MAX_CHANNELS:
            raise AudioError(f"{channels} channels are not supported (1-{self.MAX_CHANNELS})",
                             "invalid_format")
        self.rate, self.width, self.channels = rate, width, channels
        self.frame_bytes = width * channels
        self.frames_in = 0
        self._rest = b""
        self._resampler = (soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
                           if rate != SAMPLE_RATE else None)

    @property
    def seconds_in(self) -> float:
        return self.frames_in / self.rate

    def convert(self, data: bytes | bytearray | memoryview) -> Audio:
        """The 16 kHz mono audio these bytes complete (may be empty: soxr has a short delay)."""
        data = self._rest + bytes(data)
        usable = len(data) - len(data) % self.frame_bytes
        self._rest = data[usable:]
        if not usable:
            return np.zeros(0, np.float32)
        self.frames_in += usable // self.frame_bytes
        mono = self._mono(data[:usable])
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(mono, last=False).astype(np.float32, copy=False)

    def flush(self) -> Audio:
        """End of the stream: what the resampler still holds (an incomplete frame is dropped)."""
        self._rest = b""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        return tail.astype(np.float32, copy=False)

    def _mono(self, data: bytes) -> Audio:
        if self.width == 1:
            samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.width == 2:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        elif self.width == 3:
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            value = np.where(value >= 1 << 23, value - (1 << 24), value)
            samples = value.astype(np.float32) / float(1 << 23)
        else:
            samples = (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0
                       ).astype(np.float32)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return np.ascontiguousarray(samples, dtype=np.float32)


# ----------------------------------------------------------------------- containers


def decode_bytes(data: bytes, *, name: str | None = None) -> Audio:
    """Decode a whole audio or video file held in memory → mono float32 16 kHz."""
    if not data:
        raise AudioError("empty file", "empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception:  # noqa: BLE001 - not a libsndfile format: try FFmpeg
        audio = _decode_with_av(io.BytesIO(data), name)
    else:
        audio = resample(to_mono(samples), int(rate))
    if len(audio) == 0:
        raise AudioError("the file holds no audio samples", "empty")
    return _finite(audio)


def decode_file(path: str | Path) -> Audio:
    """Decode an audio or video file on disk → mono float32 16 kHz."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file", "not_found")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception:  # noqa: BLE001
        with path.open("rb") as fh:
            audio = _decode_with_av(fh, path.name)
    else:
        audio = resample(to_mono(samples), int(rate))
    if len(audio) == 0:
        raise AudioError(f"{path.name}: holds no audio samples", "empty")
    return _finite(audio)


def open_av(source: io.IOBase | str, name: str | None):  # -> (container, audio stream)
    """Open ``source`` with FFmpeg: its container and first audio stream, or :class:`AudioError`."""
    import av  # imported lazily: FFmpeg's libraries are large

    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise AudioError(f"{name or 'data'}: not a decodable audio file ({exc.__class__.__name__})",
                         "undecodable") from None
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{name or 'data'}: the file has no audio stream", "no_audio_stream")
    return container, container.streams.audio[0]


def probe_duration(path: str | Path) -> float | None:
    """Seconds of audio in a file without decoding it all (None when the container does not
    say); :class:`AudioError` when it is not decodable audio. Reads headers and one frame."""
    import av

    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - not a libsndfile format: ask FFmpeg
        pass
    else:
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    container, stream = open_av(str(path), path.name)
    try:
        try:
            next(iter(container.decode(stream)))
        except (av.error.FFmpegError, StopIteration, ValueError) as exc:
            raise AudioError(f"{path.name}: the audio stream cannot be decoded "
                             f"({exc.__class__.__name__})", "undecodable") from None
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / 1_000_000  # av.time_base
        return None
    finally:
        container.close()


def _decode_with_av(fileobj: io.IOBase, name: str | None) -> Audio:
    import av

    container, stream = open_av(fileobj, name)
    try:
        rate = stream.codec_context.sample_rate or SAMPLE_RATE
        # FFmpeg only downmixes; the rate conversion is soxr's, like every other path.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            if not parts:
                raise AudioError(f"{name or 'data'}: audio stream could not be decoded ({exc})",
                                 "undecodable") from None
    finally:
        container.close()
    if not parts:
        return np.zeros(0, np.float32)
    return resample(np.concatenate(parts).astype(np.float32), rate)


def duration(audio: Audio) -> float:
    return len(audio) / SAMPLE_RATE
