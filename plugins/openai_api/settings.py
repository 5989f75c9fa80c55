"""``[protocols.openai_api]`` settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from asrhub.diarize import DEFAULT_DISTANCE_THRESHOLD
from asrhub.protocol import ListenerSettings

# Model ids clients send, to an ASR engine of the hub ("" = the hub's default ASR engine).
DEFAULT_MODELS = {
    "whisper-1": "",
    "gpt-4o-transcribe": "",
    "gpt-4o-mini-transcribe": "",
    "gpt-4o-transcribe-diarize": "",
}


@dataclass(frozen=True)
class OpenAISettings(ListenerSettings):
    # OpenAI's own limit on an uploaded file (25 MB); a larger request gets 413 before its body
    # is read.
    max_body_bytes: int = 25 * 1024 * 1024
    # One Realtime event: OpenAI allows 15 MiB per input_audio_buffer.append; 4 MiB of base64 is
    # ~87 s of 24 kHz PCM16, plenty for a live client that appends every 20-100 ms.
    max_message_bytes: int = 4 * 1024 * 1024
    # Model ids this API answers to, each mapped to an ASR engine ("" = the hub's default).
    # The default engine's own name (e.g. "whisper") is always accepted as well.
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    # Recognition language when a request names none ("" = the engine's default).
    language: str = ""
    # Files are decoded and recognised in pieces of at most this many seconds (cut at the
    # quietest 100 ms of the last third), so memory stays bounded and SSE deltas flow while the
    # file is still being decoded.
    piece_seconds: float = 30.0
    # Transcription requests this listener runs at once; more get 429 with Retry-After.
    max_concurrent_requests: int = 4
    # Seconds a request waits for room in the inference executor before 503 + Retry-After.
    queue_timeout_s: float = 30.0
    # The Retry-After a 429/503 carries.
    retry_after_s: int = 5
    # diarized_json: cosine distance under which two segments are one speaker, and at most this
    # many speakers.
    speaker_threshold: float = DEFAULT_DISTANCE_THRESHOLD
    max_speakers: int = 8
    # Realtime: audio a session may hold unprocessed (past it the socket is not read until the
    # recogniser catches up), and the most a manual-commit (turn_detection null) buffer holds.
    realtime_max_backlog_s: float = 20.0
    realtime_max_buffer_s: float = 120.0

    def validate(self) -> None:
        super().validate()
        if not 5.0 <= self.piece_seconds <= 600.0:
            raise ValueError("piece_seconds must be between 5 and 600")
        if self.max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        if self.queue_timeout_s <= 0 or self.retry_after_s < 1:
            raise ValueError("queue_timeout_s must be > 0 and retry_after_s >= 1")
        if not 0.0 < self.speaker_threshold < 2.0 or self.max_speakers < 1:
            raise ValueError("speaker_threshold must be in (0, 2) and max_speakers >= 1")
        if self.realtime_max_backlog_s < 1.0 or self.realtime_max_buffer_s < 1.0:
            raise ValueError("realtime_max_backlog_s and realtime_max_buffer_s must be >= 1")
        for name in self.models:
            if not name.strip():
                raise ValueError("models: a model id must not be empty")
