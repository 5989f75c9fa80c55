"""The PTT wire format (JSON text frames on ``/ws/asr``): parse what clients send, build what
the server sends. No aiohttp, no engines: only shapes and the error codes of the protocol.

Client → server::

    {"type": "control", "command": "start" | "stop" | "reset", "timestamp": <ms, optional>}
    {"type": "audio", "data": "<base64 PCM int16 LE, 16 kHz, mono>", "timestamp": <ms, optional>}

Server → client::

    {"type": "status", "code": 200, "message": "...", "timestamp": <ms>}
    {"type": "result", "mode": "partial" | "final", "text": "...", "timestamp": <ms>,
     "confidence": <0..1>, "processing_time_ms": <float>}
    {"type": "error", "code": <int>, "message": "...", "timestamp": <ms>}

Error codes are HTTP-like, as in the seed (the table is in README.md beside this module).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from asrhub.protocol import ErrorCodes, ProtocolError, loads

# Error codes (HTTP-like). Each one names what went wrong; the connection stays usable for all
# but CONNECTION_LIMIT and IDLE_TIMEOUT (sent just before the server closes the socket).
BAD_REQUEST = 400  # malformed JSON, unknown type/command, missing field, bad base64, odd byte count
IDLE_TIMEOUT = 408  # nothing received for idle_timeout_s: the server closes the connection
WRONG_STATE = 409  # audio or stop before start, start twice
TOO_LARGE = 413  # one message longer than max_message_bytes
BACKLOG_FULL = 429  # audio arrives faster than it can be recognised: this message was dropped
INTERNAL = 500  # the recogniser failed: the utterance is abandoned, send start again
BUSY = 503  # too many connections (then closed), or the inference queue is full

# The codes of the errors the protocol kit detects itself (transport, limits, executor).
CODES = ErrorCodes(bad_message=BAD_REQUEST, too_big=TOO_LARGE, busy=BUSY, internal=INTERNAL,
                   too_many_connections=BUSY)

Command = Literal["start", "stop", "reset"]
COMMANDS: tuple[str, ...] = ("start", "stop", "reset")
_MAX_TIMESTAMP = 2 ** 63  # milliseconds; far beyond any clock, and what a signed 64-bit holds


@dataclass(frozen=True)
class Control:
    command: Command
    timestamp: int | None = None


@dataclass(frozen=True)
class AudioChunk:
    data: str  # base64 text; decoded by the session through asrhub.audio (the one audio edge)
    timestamp: int | None = None


ClientMessage = Control | AudioChunk


def now_ms() -> int:
    return int(time.time() * 1000)


def _timestamp(raw: dict[str, Any]) -> int | None:
    """Optional, in milliseconds (an integer in the seed; a finite number is accepted)."""
    value = raw.get("timestamp")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(BAD_REQUEST, f"\"timestamp\" must be an integer (milliseconds), "
                                         f"not {type(value).__name__}")
    if not math.isfinite(value) or abs(value) >= _MAX_TIMESTAMP:
        raise ProtocolError(BAD_REQUEST, "\"timestamp\" is out of range (milliseconds since 1970)")
    return int(value)


def parse(text: str | bytes) -> ClientMessage:
    """One text frame → a message, or :class:`ProtocolError` (code 400) saying what is wrong."""
    try:
        raw = loads(text)
    except ValueError as exc:  # malformed, NaN/Infinity, huge integers, deep nesting
        raise ProtocolError(BAD_REQUEST, f"message is not valid JSON ({exc})"[:300]) from None
    if not isinstance(raw, dict):
        raise ProtocolError(BAD_REQUEST, "message must be a JSON object with a \"type\" field")
    kind = raw.get("type")
    if kind == "control":
        command = raw.get("command")
        if not isinstance(command, str) or command not in COMMANDS:
            shown = command[:40] if isinstance(command, str) else command
            if not isinstance(shown, str | None):
                shown = type(shown).__name__
            raise ProtocolError(BAD_REQUEST, f"unknown command {shown!r} "
                                             f"(expected one of: {', '.join(COMMANDS)})")
        return Control(command, _timestamp(raw))  # type: ignore[arg-type]
    if kind == "audio":
        data = raw.get("data")
        if not isinstance(data, str):
            raise ProtocolError(BAD_REQUEST, "audio message needs \"data\": base64 text of "
                                             "16 kHz mono PCM int16 little-endian")
        return AudioChunk(data, _timestamp(raw))
    if kind is None:
        raise ProtocolError(BAD_REQUEST, "message has no \"type\" field (expected control or audio)")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_REQUEST, "\"type\" must be a string (control or audio)")
    raise ProtocolError(BAD_REQUEST, f"unknown message type {kind[:40]!r} (expected control or audio)")


def status(message: str, code: int = 200, **extra: Any) -> dict[str, Any]:
    return {"type": "status", "code": code, "message": message, "timestamp": now_ms(), **extra}


def result(mode: Literal["partial", "final"], text: str, confidence: float,
           processing_time_ms: float) -> dict[str, Any]:
    return {"type": "result", "mode": mode, "text": text, "timestamp": now_ms(),
            "confidence": round(min(1.0, max(0.0, float(confidence))), 4),
            "processing_time_ms": round(float(processing_time_ms), 1)}


def error(code: int | str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "timestamp": now_ms()}


def error_message(err: ProtocolError) -> dict[str, Any]:
    """The seed's error envelope, for the protocol kit's route."""
    return error(err.code, err.message)
