"""Wire format of the session-broadcast protocol (seed: ``session-broadcast-8000.md``).

Endpoint ``/ws/asr/{session_id}?mode=sender|receiver``.

Sender → server
    binary   raw PCM, float32 little-endian, 16 kHz, mono (any whole number of samples)
    text     ``"close"``: end of the audio stream

Server → receivers and the sender
    ``{"asr": "...", "spk": {"speaker_id": ..., "speaker_name": ..., "score": ...}}`` — one
    recognised segment, exactly the seed's shape. A result never has a ``"type"`` key.

Server → one client (our additions; the seed defines none — each has a ``"type"`` key so a
client tells them from results)
    ``{"type": "error", "code": "...", "message": "..."}``
    ``{"type": "closed", "session_id": ..., "results": n, "audio_s": x, "reason": ...}``:
    the sender's final acknowledgement, sent after the session's last result.

Speaker of a segment that matches no enrolled voiceprint (or when none is enrolled, speaker
identification is off, or the segment is too short): :data:`UNKNOWN_SPEAKER_ID` as both id and
name, with ``score`` the similarity of the closest voiceprint (0.0 when there is none).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from asrhub.audio import AudioError, float32le_to_float
from asrhub.engine import Audio
from asrhub.protocol import ErrorCodes, ProtocolError

CLOSE_TEXT = "close"
UNKNOWN_SPEAKER_ID = "unknown"
# Float PCM from a browser or soundfile stays within [-1, 1] (a little over when clipped).
# Far larger values mean the bytes are not float32 PCM (int16 sent by mistake, say).
MAX_ABS_SAMPLE = 16.0


class Mode(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"


class ErrorCode(enum.StrEnum):
    """Codes of our ``{"type": "error"}`` messages (the seed defines none)."""

    INVALID_MESSAGE = "invalid_message"
    MESSAGE_TOO_BIG = "message_too_big"
    INTERNAL_ERROR = "internal_error"
    INVALID_MODE = "invalid_mode"
    INVALID_SESSION_ID = "invalid_session_id"
    SENDER_EXISTS = "sender_exists"
    TOO_MANY_RECEIVERS = "too_many_receivers"
    TOO_MANY_SESSIONS = "too_many_sessions"
    INVALID_AUDIO = "invalid_audio"
    UNEXPECTED_TEXT = "unexpected_text"
    RECEIVER_SENT_DATA = "receiver_sent_data"
    BACKLOG_FULL = "backlog_full"
    RECOGNITION_FAILED = "recognition_failed"
    SERVER_BUSY = "server_busy"
    SESSION_CLOSED = "session_closed"
    # [cluster] redis_url set and Redis unreachable: the session cannot reach other instances.
    CLUSTER_UNAVAILABLE = "cluster_unavailable"


# Close codes of refusals: load (1013: try again later) or the client's own mistake (1008).
TRY_AGAIN_LATER = 1013
REFUSAL_CLOSE_CODES = {
    ErrorCode.TOO_MANY_SESSIONS: TRY_AGAIN_LATER,
    ErrorCode.TOO_MANY_RECEIVERS: TRY_AGAIN_LATER,
    ErrorCode.SERVER_BUSY: TRY_AGAIN_LATER,
    ErrorCode.CLUSTER_UNAVAILABLE: TRY_AGAIN_LATER,
}

CODES = ErrorCodes(bad_message=ErrorCode.INVALID_MESSAGE, too_big=ErrorCode.MESSAGE_TOO_BIG,
                   busy=ErrorCode.SERVER_BUSY, internal=ErrorCode.INTERNAL_ERROR,
                   too_many_connections=ErrorCode.SERVER_BUSY)


def refusal(code: ErrorCode, message: str) -> ProtocolError:
    """A connection that cannot join: the error, then the close (1013 for load, else 1008)."""
    return ProtocolError(code, message, fatal=True, close_code=REFUSAL_CLOSE_CODES.get(code))


# ----------------------------------------------------------------------- client → server

MAX_SESSION_ID_LENGTH = 256


def parse_session_id(raw: str) -> str:
    session_id = raw.strip()
    if not session_id:
        raise refusal(ErrorCode.INVALID_SESSION_ID, "the session id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise refusal(ErrorCode.INVALID_SESSION_ID,
                      f"the session id is longer than {MAX_SESSION_ID_LENGTH} characters")
    return session_id


def parse_mode(raw: str | None) -> Mode:
    """The ``mode`` query parameter (required)."""
    if raw is None or raw == "":
        raise refusal(ErrorCode.INVALID_MODE,
                      "missing query parameter mode: use ?mode=sender or ?mode=receiver")
    try:
        return Mode(raw.strip().lower())
    except ValueError:
        raise refusal(ErrorCode.INVALID_MODE,
                      f"invalid mode {raw[:40]!r}: use ?mode=sender or ?mode=receiver") from None


@dataclass(frozen=True)
class AudioFrame:
    pcm: Audio


@dataclass(frozen=True)
class EndOfAudio:
    """The sender's text ``"close"``."""


SenderMessage = AudioFrame | EndOfAudio


def parse_sender_text(text: str) -> EndOfAudio:
    if text.strip().lower() == CLOSE_TEXT:
        return EndOfAudio()
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise ProtocolError(ErrorCode.UNEXPECTED_TEXT,
                        f"unexpected text message {shown!r}: audio goes in binary messages "
                        f"(float32 PCM, 16 kHz, mono); the only text message is \"close\"")


EXPECTED_AUDIO = "expected raw float32 little-endian PCM, 16 kHz, mono"
INT16_HINT = "; is the sender sending 16-bit integers?"


def parse_sender_audio(data: bytes) -> AudioFrame:
    try:
        pcm = float32le_to_float(data)
    except AudioError as exc:
        # int16 bytes read as float32 give NaN, infinities and huge values
        hint = INT16_HINT if exc.reason == "invalid_samples" else ""
        raise ProtocolError(ErrorCode.INVALID_AUDIO, f"{exc} ({EXPECTED_AUDIO}{hint})") from None
    if len(pcm) and float(np.max(np.abs(pcm))) > MAX_ABS_SAMPLE:
        raise ProtocolError(ErrorCode.INVALID_AUDIO,
                            f"samples far outside [-1, 1] ({EXPECTED_AUDIO}{INT16_HINT})")
    return AudioFrame(pcm)


# ----------------------------------------------------------------------- server → client


@dataclass(frozen=True)
class Speaker:
    speaker_id: str
    speaker_name: str
    score: float

    @classmethod
    def unknown(cls, best_score: float = 0.0) -> Speaker:
        return cls(UNKNOWN_SPEAKER_ID, UNKNOWN_SPEAKER_ID, best_score)

    @property
    def is_known(self) -> bool:
        return self.speaker_id != UNKNOWN_SPEAKER_ID

    def to_dict(self) -> dict[str, Any]:
        return {"speaker_id": self.speaker_id, "speaker_name": self.speaker_name,
                "score": round(float(self.score), 4)}


@dataclass(frozen=True)
class Result:
    text: str
    speaker: Speaker

    def to_dict(self) -> dict[str, Any]:
        return {"asr": self.text, "spk": self.speaker.to_dict()}


def error_message(err: ProtocolError) -> dict[str, Any]:
    """Our error envelope (the route's ``error_message``)."""
    return {"type": "error", "code": str(err.code), "message": err.message}


def closed_message(session_id: str, results: int, audio_s: float, reason: str) -> dict[str, Any]:
    return {"type": "closed", "session_id": session_id, "results": results,
            "audio_s": round(audio_s, 3), "reason": reason}
