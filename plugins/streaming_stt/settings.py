"""``[protocols.streaming_stt]`` settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamingSTTSettings:
    # Recognition language ("" = the engine's default; e.g. "en", "zh"). A client may override
    # it per session with {"command": "start", "language": "..."}.
    language: str = ""
    # Audio is handed to the recogniser in pieces of this much. The recogniser decides when a
    # piece is worth a partial decode: Whisper decodes at most every [engines.whisper]
    # partial_interval (1 s by default) of new audio, and as soon as a pause follows speech,
    # so small pieces cost little and keep partials and finals on time.
    feed_interval_s: float = 0.25
    # A session that received audio and then none for this long ends by itself (final +
    # session_ended), as if the client had sent stop. 0 = never. This is what lets the seed's
    # asyncio client finish: it waits for session_ended before it sends stop.
    idle_end_s: float = 2.0
    # Unprocessed audio a session may hold; past it the server stops reading the socket until
    # the recogniser catches up (TCP backpressure), so memory stays bounded.
    max_backlog_s: float = 20.0
    # Undecoded container bytes (webm/ogg) a session may hold.
    max_container_bytes: int = 4 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    max_connections: int = 0  # 0 = no limit
    heartbeat_s: float = 30.0

    def validate(self) -> None:
        if not 0.02 <= self.feed_interval_s <= 10.0:
            raise ValueError("feed_interval_s must be between 0.02 and 10 seconds")
        if self.idle_end_s < 0:
            raise ValueError("idle_end_s must be >= 0 (0 disables the idle end)")
        if self.max_backlog_s < max(1.0, 2 * self.feed_interval_s):
            raise ValueError("max_backlog_s must be at least 1 s and twice feed_interval_s")
        if self.max_message_bytes < 1024 or self.max_container_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be >= 1024 and max_container_bytes >= 65536")
        if self.max_connections < 0 or self.heartbeat_s < 0:
            raise ValueError("max_connections and heartbeat_s must be >= 0")
