"""``[protocols.streaming_stt]`` settings.

The shared listener limits (``max_connections``, ``max_connections_per_peer``,
``max_message_bytes``, ``max_outbox``, ``heartbeat_s``, ``max_body_bytes``) come from
:class:`asrhub.protocol.ListenerSettings`, with its defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asrhub.protocol import ListenerSettings


@dataclass(frozen=True)
class StreamingSTTSettings(ListenerSettings):
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
    # After stop, audio of a webm/ogg session (or of a session that has had none yet) that
    # arrives within this long still goes into the same final: the seed's JavaScript client
    # calls mediaRecorder.stop() and sends stop at once, and MediaRecorder delivers its last
    # chunk after that. Raw PCM sessions end at once (their clients write audio before stop).
    # 0 = no grace: audio after stop is refused.
    stop_grace_s: float = 0.5
    # Unprocessed audio a session may hold; past it the server stops reading the socket until
    # the recogniser catches up (TCP backpressure), so memory stays bounded.
    max_backlog_s: float = 20.0
    # Undecoded container bytes (webm/ogg) a session may hold.
    max_container_bytes: int = 4 * 1024 * 1024

    def validate(self) -> None:
        super().validate()
        if not 0.02 <= self.feed_interval_s <= 10.0:
            raise ValueError("feed_interval_s must be between 0.02 and 10 seconds")
        if self.idle_end_s < 0 or not math.isfinite(self.idle_end_s):
            raise ValueError("idle_end_s must be >= 0 (0 disables the idle end)")
        if not 0 <= self.stop_grace_s <= 10.0:
            raise ValueError("stop_grace_s must be between 0 and 10 seconds")
        if not self.max_backlog_s >= max(1.0, 2 * self.feed_interval_s) or not math.isfinite(self.max_backlog_s):
            raise ValueError("max_backlog_s must be at least 1 s and twice feed_interval_s")
        if self.max_container_bytes < 64 * 1024:
            raise ValueError("max_container_bytes must be >= 65536")
