"""A quick look at an uploaded file before it is queued: is it audio we can decode, and how
long is it (for the queue's wait estimate)? Decoding proper is the core's (asrhub.audio).

Blocking; the caller runs it in a thread. Reads headers and one decoded frame, not the file.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from asrhub.audio import AudioError

# The formats the seed lists ("支持的音频格式"); anything else is invalid_file_type.
SUPPORTED_EXTENSIONS = ("wav", "mp3", "mp4", "m4a", "flac", "aac", "ogg", "opus")


def probe(path: Path) -> float | None:
    """Seconds of audio (None when the container does not say); AudioError if undecodable."""
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - not a libsndfile format: ask FFmpeg
        pass
    else:
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise AudioError(f"{path.name}: not a decodable audio file ({exc.__class__.__name__})",
                         "undecodable") from None
    try:
        if not container.streams.audio:
            raise AudioError(f"{path.name}: the file has no audio stream", "no_audio_stream")
        stream = container.streams.audio[0]
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
