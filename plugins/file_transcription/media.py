"""A quick look at an uploaded file before it is queued: is it audio we can decode, and how
long is it (for the queue's wait estimate)? Decoding proper is the core's (asrhub.audio).

Blocking; the caller runs it in a thread. Reads headers and one decoded frame, not the file.
"""

from __future__ import annotations

from pathlib import Path

from asrhub.audio import probe_duration

# The formats the seed lists ("支持的音频格式"); anything else is invalid_file_type.
SUPPORTED_EXTENSIONS = ("wav", "mp3", "mp4", "m4a", "flac", "aac", "ogg", "opus")


def probe(path: Path) -> float | None:
    """Seconds of audio (None when the container does not say); AudioError if undecodable."""
    return probe_duration(path)
