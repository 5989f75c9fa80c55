"""``[protocols.session_broadcast]`` (the listener keys enabled/host/port/token/tls belong to
the core)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BroadcastSettings:
    # Recognition language ("" = detected on the session's first segment of at least
    # ``language_lock_s`` seconds, then kept for the session: detection costs a second encoder
    # pass per segment otherwise).
    language: str = ""
    language_lock_s: float = 2.0
    # Speaker identification against the voiceprint store. 0 = the speaker engine's default.
    identify_speakers: bool = True
    speaker_threshold: float = 0.0
    # Segments shorter than this get the unknown speaker without being embedded.
    min_speaker_s: float = 0.5
    # Segmentation: a VAD segment longer than max_segment_s is cut at its quietest point
    # (Whisper sees at most 30 s); shorter than min_segment_s is dropped.
    max_segment_s: float = 20.0
    min_segment_s: float = 0.3
    # Audio received but not yet recognised, per session; beyond it the sender is told
    # "backlog_full" and its session ends (what was accepted is still recognised).
    max_backlog_s: float = 60.0
    # Results queued for one client; a client that far behind is closed (1008) with a reason,
    # so it never delays the sender or the other receivers.
    client_queue: int = 64
    max_receivers: int = 100  # per session
    max_sessions: int = 100  # sessions at once (waiting for a sender, live or finishing)
    max_message_bytes: int = 1024 * 1024
    heartbeat_s: float = 30.0
    max_connections: int = 0  # 0 = no limit

    def validate(self) -> None:
        for name in ("language_lock_s", "speaker_threshold", "min_speaker_s", "min_segment_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 1.0 <= self.max_segment_s <= 30.0:
            raise ValueError("max_segment_s must be between 1 and 30 (Whisper's window)")
        if self.min_segment_s >= self.max_segment_s / 2:
            raise ValueError("min_segment_s must be below half of max_segment_s")
        if self.speaker_threshold > 1.0:
            raise ValueError("speaker_threshold is a cosine similarity: at most 1")
        if self.max_backlog_s < self.max_segment_s:
            raise ValueError("max_backlog_s must be at least max_segment_s")
        for name in ("client_queue", "max_receivers", "max_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be >= 1024")
        if self.heartbeat_s < 0 or self.max_connections < 0:
            raise ValueError("heartbeat_s and max_connections must be >= 0")
