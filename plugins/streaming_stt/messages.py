"""The streaming STT wire format (seed: streaming-stt-8765.md). No aiohttp here.

Client → server: text frames ``{"command": "start"}`` / ``{"command": "stop"}``; binary frames
of audio (PCM int16 LE 16 kHz mono, or a webm/ogg container stream).
Server → client: ``connected``, ``session_started``, ``partial``, ``final``, ``session_ended``
and ``error``. The seed defines no error message; ours is ``{"type": "error", "code",
"message"}`` with the codes below, and the connection stays usable after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from asrhub.protocol import ErrorCodes, ProtocolError, loads

CONNECTED_MESSAGE = "已连接到流式 STT 服务"

# Error codes (the seed has none of its own).
INVALID_JSON = "invalid_json"  # a text frame that is not a JSON object (NaN, huge numbers too)
INVALID_MESSAGE = "invalid_message"  # JSON without a usable "command"
MESSAGE_TOO_LARGE = "message_too_large"  # a frame over max_message_bytes (dropped; connection kept)
UNKNOWN_COMMAND = "unknown_command"
INVALID_AUDIO = "invalid_audio"  # PCM of odd length, an undecodable container stream
NOT_AUDIO = "not_audio"  # a binary frame that is plainly not audio (text, JSON, an image...)
AUDIO_AFTER_STOP = "audio_after_stop"
NO_SESSION = "no_session"  # stop with no session running
SESSION_ACTIVE = "session_active"  # start while a session runs
BACKLOG_FULL = "backlog_full"
SERVER_BUSY = "server_busy"
ENGINE_ERROR = "engine_error"
TOO_MANY_CONNECTIONS = "too_many_connections"
INTERNAL_ERROR = "internal_error"  # a failure inside the server (the connection is closed)

# The codes of the errors the protocol kit detects itself (transport, limits, executor).
CODES = ErrorCodes(bad_message=INVALID_MESSAGE, too_big=MESSAGE_TOO_LARGE, busy=SERVER_BUSY,
                   internal=INTERNAL_ERROR, too_many_connections=TOO_MANY_CONNECTIONS)

_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


@dataclass(frozen=True)
class Start:
    """``{"command": "start"}``; ``language`` is our optional extension (e.g. "en", "zh")."""

    language: str | None = None


@dataclass(frozen=True)
class Stop:
    """``{"command": "stop"}``: recognise what remains, send ``final``, then ``session_ended``."""


Command = Start | Stop


def parse_command(text: str | bytes) -> Command:
    """Parse one text frame. Raises :class:`~asrhub.protocol.ProtocolError`."""
    try:
        data = loads(text)
    except ValueError:  # malformed, NaN/Infinity, huge integers, deep nesting
        raise ProtocolError(INVALID_JSON, "text messages must be JSON, e.g. {\"command\": \"start\"}") from None
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_JSON, "a message must be a JSON object")
    command = data.get("command")
    if not isinstance(command, str):
        raise ProtocolError(INVALID_MESSAGE, "the message has no \"command\" (start or stop)")
    if command == "start":
        language = data.get("language")
        if language is not None and (not isinstance(language, str) or not _LANGUAGE.match(language)):
            raise ProtocolError(INVALID_MESSAGE, "\"language\" must be a language code such as \"en\" or \"zh\"")
        return Start(language=language or None)
    if command == "stop":
        return Stop()
    raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {command[:40]!r} (known: start, stop)")


# ---------------------------------------------------------------- server messages


def connected() -> dict[str, Any]:
    return {"type": "connected", "message": CONNECTED_MESSAGE, "mode": "streaming"}


def session_started() -> dict[str, Any]:
    return {"type": "session_started"}


def partial(text: str) -> dict[str, Any]:
    return {"type": "partial", "text": text, "is_final": False}


def final(text: str) -> dict[str, Any]:
    return {"type": "final", "text": text, "is_final": True}


def session_ended() -> dict[str, Any]:
    return {"type": "session_ended"}


def error(code: str | int, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def error_message(err: ProtocolError) -> dict[str, Any]:
    """Our error envelope, for the protocol kit's route."""
    return error(err.code, err.message)


# ---------------------------------------------------------------- binary frames

# Formats that are not a PCM stream and that we do not decode: told apart from PCM by magic.
_NOT_AUDIO_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "gzip data",
    b"\x1f\x43\xb6\x75": "a WebM cluster without its header (a container stream must start with its header)",
}
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def describe_non_audio(data: bytes | bytearray | memoryview) -> str | None:
    """Why ``data`` plainly is not a raw PCM frame, or None if it may be one.

    PCM has no header, so any even number of bytes could be audio; this only rejects what is
    recognisably something else: known file signatures, and text (JSON sent as a binary frame).
    Real int16 audio is practically never all printable ASCII over 64 bytes.
    """
    head = bytes(data[:8])
    for magic, what in _NOT_AUDIO_MAGIC.items():
        if head.startswith(magic):
            return what
    if len(data) >= 64 and not bytes(data).translate(None, _PRINTABLE):
        return "text" if not head.lstrip().startswith((b"{", b"[")) else "JSON (send commands as text frames)"
    return None
