"""``[protocols.file_transcription]`` settings (listener keys such as port are the core's)."""

from __future__ import annotations

from dataclasses import dataclass

from asrhub.diarize import DEFAULT_DISTANCE_THRESHOLD


@dataclass(frozen=True)
class FileTranscriptionSettings:
    # Largest file accepted (the seed's file_too_large).
    max_file_size_mb: float = 512.0
    # Largest WebSocket message (the seed: 10 MB): bounds upload_data and each upload_chunk.
    max_message_mb: float = 10.0
    # File jobs transcribed at once; live protocols always go first in the executor.
    concurrency: int = 1
    # Tasks waiting (queued) or being uploaded at once; beyond that upload_request is refused.
    max_pending_tasks: int = 64
    # Speaker diarization (segments' speaker, the result's speakers). Without a speaker engine
    # the task still completes, with one speaker and a logged warning.
    diarization: bool = True
    # Cosine distance under which two clusters of segments are one speaker (see diarize.py).
    speaker_threshold: float = DEFAULT_DISTANCE_THRESHOLD
    max_speakers: int = 8
    # ASR engine for files ("" = [engines] asr) and language ("" = the engine's setting).
    asr_engine: str = ""
    language: str = ""
    # Longest audio handed to the ASR engine in one executor call (speech regions of one
    # speaker merged up to this; longer regions cut at their quietest point). 20 s keeps each
    # call short and, with the Whisper engine, on its single-window path: as fast as
    # transcribing the whole file (bench/hub_overhead.md).
    piece_seconds: float = 20.0
    # A chunked upload untouched this long is dropped (its chunks deleted).
    upload_ttl_hours: float = 24.0
    # A task whose process died this many times while transcribing it is marked failed.
    max_attempts: int = 3
    # Server ping interval (the seed's client pings every 60 s too).
    heartbeat: float = 60.0
    max_connections: int = 0  # 0 = no limit

    def validate(self) -> None:
        if self.max_file_size_mb <= 0 or self.max_message_mb <= 0:
            raise ValueError("max_file_size_mb and max_message_mb must be positive")
        if self.concurrency < 1 or self.max_pending_tasks < 1 or self.max_attempts < 1:
            raise ValueError("concurrency, max_pending_tasks and max_attempts must be >= 1")
        if not 0.0 < self.speaker_threshold < 2.0:
            raise ValueError("speaker_threshold is a cosine distance in (0, 2)")
        if self.max_speakers < 1:
            raise ValueError("max_speakers must be >= 1")
        if not 1.0 <= self.piece_seconds <= 600.0:
            raise ValueError("piece_seconds must be between 1 and 600")
        if self.upload_ttl_hours <= 0 or self.heartbeat <= 0:
            raise ValueError("upload_ttl_hours and heartbeat must be positive")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def max_payload_bytes(self) -> int:
        """Largest file (single upload) or chunk that fits one message once base64-encoded."""
        return (self.max_message_bytes - 4096) // 4 * 3
