"""``[protocols.ptt]``: the limits and switches of the push-to-talk protocol."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PTTSettings:
    # Connections beyond this many get an error (503) and are closed (0 = no limit).
    max_connections: int = 20
    # A text frame longer than this gets error 413 and is dropped; the connection stays open.
    # Frames over twice this size break the WebSocket itself (closed with 1009).
    # 2 MiB of base64 is ~49 s of 16 kHz int16 audio in one message.
    max_message_bytes: int = 2 * 1024 * 1024
    # Close a connection that sent nothing for this long (error 408 first; 0 = never).
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
    # WebSocket ping interval (0 = none).
    heartbeat_s: float = 30.0
    # Outbound messages queued for a slow client before it is disconnected.
    max_outbox: int = 256

    def validate(self) -> None:
        if self.max_connections < 0:
            raise ValueError("max_connections must be >= 0")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        for name in ("idle_timeout_s", "partial_interval_s", "heartbeat_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_backlog_s <= 0:
            raise ValueError("max_backlog_s must be > 0")
        if self.max_outbox < 1:
            raise ValueError("max_outbox must be >= 1")
