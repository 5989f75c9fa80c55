"""``[protocols.session_broadcast]`` (the listener keys enabled/host/port/token/tls belong to
the core; the shared limits ``max_connections``, ``max_connections_per_peer``,
``max_message_bytes``, ``max_outbox``, ``heartbeat_s`` come from
:class:`asrhub.protocol.ListenerSettings`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from asrhub.language import parse_language
from asrhub.protocol import ListenerSettings


@dataclass(frozen=True)
class BroadcastSettings(ListenerSettings):
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
    # Segmentation: speech longer than max_segment_s is cut at its quietest point (Whisper sees
    # at most 30 s); a segment shorter than min_segment_s is dropped.
    max_segment_s: float = 20.0
    min_segment_s: float = 0.3
    # Audio received but not yet recognised, per session; beyond it the sender is told
    # "backlog_full" and its session ends (what was accepted is still recognised).
    max_backlog_s: float = 60.0
    max_receivers: int = 100  # per session
    # Sessions with a sender at once (live or finishing). Sessions that only have receivers
    # (waiting for a sender) do not count: they are bounded by the connection limits, so
    # receivers cannot lock senders out.
    max_sessions: int = 100
    # Shared limits, with this protocol's defaults: one session may have max_receivers clients;
    # a client that far behind (results queued) is closed (1008) so it never delays the others.
    max_connections: int = 256
    max_outbox: int = 64

    def validate(self) -> None:
        super().validate()
        for name, value in vars(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
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
        for name in ("max_receivers", "max_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.language:
            try:
                parse_language(self.language)
            except ValueError as exc:
                raise ValueError(f"language: {exc}") from None
