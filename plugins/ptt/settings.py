"""``[protocols.ptt]``: the limits and switches of the push-to-talk protocol.

The shared listener limits (``max_connections``, ``max_connections_per_peer``,
``max_message_bytes``, ``max_outbox``, ``heartbeat_s``, ``max_body_bytes``) come from
:class:`asrhub.protocol.ListenerSettings`; two defaults differ for this protocol (below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asrhub.protocol import ListenerSettings


@dataclass(frozen=True)
class PTTSettings(ListenerSettings):
    # The seed serves 10-20 concurrent connections on a CPU (its MAX_CONNECTIONS): beyond this
    # many a connection gets error 503 and is closed with 1013 (0 = no limit).
    max_connections: int = 20
    # A text frame longer than this gets error 413 and is dropped; the connection stays open
    # (frames over four times this close it with 1009). The seed's clients send a whole
    # recording in one message: 2 MiB of base64 is ~49 s of 16 kHz int16 audio.
    max_message_bytes: int = 2 * 1024 * 1024
    # Close a connection that sent nothing for this long (error 408 first; 0 = never).
    # Heartbeat pings and pongs are not activity.
    idle_timeout_s: float = 300.0
    # Send partial results while audio arrives (off: only the final after stop).
    partial_results: bool = True
    # Partials whose text did not change are sent at most this often (text changes go at once).
    partial_interval_s: float = 0.5
    # Language code for the recogniser ("" = the engine's default / auto-detect).
    language: str = ""
    # Give the recogniser a VAD stream to cut long holds into utterances ([engines] vad).
    vad: bool = True
    # Unprocessed audio one connection may have waiting before audio is refused (429).
    max_backlog_s: float = 60.0

    def validate(self) -> None:
        super().validate()
        for name in ("idle_timeout_s", "partial_interval_s"):
            value = getattr(self, name)
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be >= 0")
        if not self.max_backlog_s > 0 or not math.isfinite(self.max_backlog_s):
            raise ValueError("max_backlog_s must be > 0")
