"""The Wyoming wire format: events of the ``wyoming`` package, read with limits. No sockets.

An event is a JSON header line, optional additional JSON data and an optional binary payload::

    {"type": "...", "data": {...}, "data_length": N, "payload_length": M}\\n
    <N bytes of JSON merged over "data"><M bytes of payload>

:func:`read_event` is the package's ``async_read_event`` with every length bounded before
anything is read into memory, and with each way the stream can be malformed raised as a
:class:`~asrhub.protocol.ProtocolError` carrying one of the codes below (the package's reader
returns None for all of them, which looks like a clean end of stream). :func:`frame` is the
package's own ``write_event`` into bytes, so what leaves the hub is framed exactly as every
Wyoming peer frames it.

The parse functions turn client events into the package's dataclasses after checking the
fields the package would index blindly (``event.data["rate"]``).
"""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass
from typing import Any

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart
from wyoming.error import Error
from wyoming.event import Event, write_event
from wyoming.info import SelectProgram

from asrhub.protocol import ProtocolError, loads

# Error codes (Wyoming's ``error`` event has a free-form ``code``; these are asrhub's).
BAD_EVENT = "bad_event"  # a header or data that is not a JSON object of the right shape
TOO_BIG = "too_big"  # header, data or payload over the listener's limits
IDLE_TIMEOUT = "idle_timeout"
AUDIO_NOT_STARTED = "audio_not_started"  # audio-chunk / audio-stop before audio-start
UNEXPECTED_EVENT = "unexpected_event"  # e.g. transcribe or audio-start while audio flows
UNSUPPORTED_AUDIO = "unsupported_audio"  # a rate / width / channels the hub cannot convert
UNKNOWN_MODEL = "unknown_model"  # transcribe / select-program names no configured engine
ENGINE_ERROR = "engine_error"  # the recogniser refused (e.g. a language it does not know)
BACKLOG_FULL = "backlog_full"
SERVER_BUSY = "server_busy"
INTERNAL_ERROR = "internal_error"
TOO_MANY_CONNECTIONS = "too_many_connections"

_NEWLINE = b"\n"
_MAX_TYPE_LENGTH = 64
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$")


# ----------------------------------------------------------------------------- framing


async def read_event(reader: asyncio.StreamReader, max_payload_bytes: int,
                     max_header_bytes: int) -> Event | None:
    """The next event, or None at a clean end of stream (no partial header).

    The header line plus its additional data may take ``max_header_bytes``, the payload
    ``max_payload_bytes``; lengths are checked before the bytes are read. A stream that ends
    inside an event raises :class:`asyncio.IncompleteReadError` (the client went away).
    """
    try:
        line = await reader.readuntil(_NEWLINE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    except asyncio.LimitOverrunError:
        raise ProtocolError(TOO_BIG, f"event header longer than {max_header_bytes} bytes "
                            "without a newline") from None
    if len(line) > max_header_bytes:
        raise ProtocolError(TOO_BIG, f"event header of {len(line)} bytes is over the limit "
                            f"of {max_header_bytes}")
    try:
        header = loads(line)
    except ValueError as exc:
        raise ProtocolError(BAD_EVENT, f"event header is not valid JSON: {exc}"[:300]) from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_EVENT, "event header must be a JSON object")
    event_type = header.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > _MAX_TYPE_LENGTH:
        raise ProtocolError(BAD_EVENT, "event header needs a \"type\" (a short string)")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(BAD_EVENT, f"{event_type}: \"data\" must be a JSON object")
    data_length = _length(header, "data_length", event_type)
    payload_length = _length(header, "payload_length", event_type)
    if data_length > max_header_bytes - len(line):
        raise ProtocolError(TOO_BIG, f"{event_type}: data of {data_length} bytes is over the "
                            f"limit of {max_header_bytes} bytes for header and data")
    if payload_length > max_payload_bytes:
        raise ProtocolError(TOO_BIG, f"{event_type}: payload of {payload_length} bytes is over "
                            f"the limit of {max_payload_bytes}")
    if data_length:
        raw = await reader.readexactly(data_length)
        try:
            extra = loads(raw)
        except ValueError as exc:
            raise ProtocolError(BAD_EVENT, f"{event_type}: data is not valid JSON: {exc}"[:300]) from None
        if not isinstance(extra, dict):
            raise ProtocolError(BAD_EVENT, f"{event_type}: data must be a JSON object")
        data = {**data, **extra}
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=event_type, data=data, payload=payload)


def _length(header: dict[str, Any], key: str, event_type: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(BAD_EVENT, f"{event_type}: {key} must be a non-negative integer")
    return value


def frame(event: Event) -> bytes:
    """The event as the ``wyoming`` package writes it (header line, data, payload)."""
    buffer = io.BytesIO()
    write_event(event, buffer)  # type: ignore[arg-type]  # BytesIO is a BinaryIO
    return buffer.getvalue()


def error_event(code: str | int, text: str) -> bytes:
    return frame(Error(text=text, code=str(code)).event())


# ----------------------------------------------------------------------------- client events


@dataclass(frozen=True)
class AudioFormat:
    rate: int
    width: int
    channels: int


def parse_audio_format(event: Event) -> AudioFormat:
    """``rate``, ``width`` and ``channels`` of an audio-start / audio-chunk, checked."""
    values = {}
    for key in ("rate", "width", "channels"):
        value = event.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(BAD_EVENT, f"{event.type}: \"{key}\" must be an integer",
                                fatal=True)
        values[key] = value
    return AudioFormat(**values)


def parse_audio_start(event: Event) -> AudioStart:
    fmt = parse_audio_format(event)
    return AudioStart(rate=fmt.rate, width=fmt.width, channels=fmt.channels)


def parse_audio_chunk(event: Event) -> AudioChunk:
    fmt = parse_audio_format(event)
    return AudioChunk(rate=fmt.rate, width=fmt.width, channels=fmt.channels,
                      audio=event.payload or b"")


def parse_transcribe(event: Event) -> Transcribe:
    """The package's :class:`Transcribe`, its optional fields checked for type."""
    data = event.data
    for key in ("name", "language"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ProtocolError(BAD_EVENT, f"transcribe: \"{key}\" must be a string", fatal=True)
    language = data.get("language")
    if language and not _LANGUAGE.match(language):
        raise ProtocolError(BAD_EVENT, f"transcribe: {language[:40]!r} is not a language code "
                            "such as \"en\" or \"en-US\"", fatal=True)
    context = data.get("context")
    if context is not None and not isinstance(context, dict):
        raise ProtocolError(BAD_EVENT, "transcribe: \"context\" must be an object", fatal=True)
    return Transcribe.from_event(event)


def parse_select_program(event: Event) -> SelectProgram:
    name = event.data.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(BAD_EVENT, "select-program: \"name\" must be a string", fatal=True)
    return SelectProgram(name=name)


def wants_streaming(transcribe: Transcribe | None, default: bool) -> bool:
    """A client's own choice (transcribe's ``context.transcript_streaming``), else ``default``."""
    if transcribe is not None and isinstance(transcribe.context, dict):
        choice = transcribe.context.get("transcript_streaming")
        if isinstance(choice, bool):
            return choice
    return default
