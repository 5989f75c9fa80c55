"""``[protocols.funasr_runtime]`` settings (the shared listener limits plus the protocol's own)."""

from __future__ import annotations

from dataclasses import dataclass

from asrhub.protocol import ListenerSettings


@dataclass(frozen=True)
class FunASRRuntimeSettings(ListenerSettings):
    # Recognition language when the client's svs_lang is "auto" ("" = the engine's default).
    language: str = ""
    # online / 2pass: unrecognised audio a connection may hold. Past it the server stops
    # reading the socket until the recogniser catches up (TCP backpressure), so a client that
    # sends faster than real time (--send_without_sleep) is slowed down, not dropped.
    max_backlog_s: float = 20.0
    # offline: the largest input (PCM or a container file) one input may send.
    max_offline_bytes: int = 64 * 1024 * 1024
    # offline: ask the engine for word timestamps ("timestamp" and "stamp_sents" in the
    # result). Whisper then takes its slower file path (word alignment).
    offline_timestamps: bool = True

    def validate(self) -> None:
        super().validate()
        if not 1.0 <= self.max_backlog_s <= 600.0:
            raise ValueError("max_backlog_s must be between 1 and 600 seconds")
        if self.max_offline_bytes < 64 * 1024:
            raise ValueError("max_offline_bytes must be >= 65536")
