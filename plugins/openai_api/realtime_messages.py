"""The Realtime API's transcription session on the wire (no aiohttp here).

Two dialects of the same session, both accepted in either direction of configuration:

- GA (the current SDK, ``client.realtime.connect(extra_query={"intent": "transcription"})``):
  ``session.update`` with ``{"type": "transcription", "audio": {"input": {"format",
  "transcription", "turn_detection", "noise_reduction"}}}``; the server says
  ``session.created`` / ``session.updated``.
- Beta (a client sending ``OpenAI-Beta: realtime=v1``): ``transcription_session.update`` with
  the flat ``input_audio_format`` / ``input_audio_transcription`` / ``turn_detection`` /
  ``input_audio_noise_reduction``; the server says ``transcription_session.created`` /
  ``transcription_session.updated``.

Audio formats: PCM16 LE mono 24 kHz (``pcm16`` / ``audio/pcm``), G.711 µ-law and A-law at 8 kHz
(``g711_ulaw`` / ``audio/pcmu``, ``g711_alaw`` / ``audio/pcma``), base64 in
``input_audio_buffer.append``.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from asrhub.audio import AudioError, pcm16le_to_float
from asrhub.engine import Audio
from asrhub.protocol import ProtocolError, loads
from asrhub.text import encodable

Dialect = Literal["ga", "beta"]
InputFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
INPUT_RATES: dict[str, int] = {"pcm16": 24000, "g711_ulaw": 8000, "g711_alaw": 8000}
GA_FORMATS: dict[str, InputFormat] = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw",
                                      "audio/pcma": "g711_alaw"}

# Error codes (``error.code`` of an ``error`` event).
INVALID_EVENT = "invalid_event"
UNKNOWN_EVENT = "unknown_event_type"
INVALID_VALUE = "invalid_value"
MISSING_PARAMETER = "missing_required_parameter"
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
BUFFER_FULL = "input_audio_buffer_full"
UNSUPPORTED_INTENT = "unsupported_intent"
TOO_BIG = "message_too_large"
SERVER_BUSY = "server_busy"
SERVER_ERROR = "server_error"
TOO_MANY_CONNECTIONS = "too_many_connections"
TRANSCRIPTION_FAILED = "transcription_failed"

DEFAULT_TURN_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                          "silence_duration_ms": 500}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(16)[:22]}"


def invalid(message: str, *, param: str | None = None, code: str = INVALID_VALUE,
            event_id: str | None = None) -> ProtocolError:
    return ProtocolError(code, message, param=param, event_id=event_id)


@dataclass(frozen=True)
class TranscriptionConfig:
    """What a transcription session is set to (defaults as OpenAI's)."""

    input_format: InputFormat = "pcm16"
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_TURN_DETECTION))
    noise_reduction: dict[str, Any] | None = None

    @property
    def input_rate(self) -> int:
        return INPUT_RATES[self.input_format]


# ----------------------------------------------------------------------------- client events


def parse_event(text: str) -> dict[str, Any]:
    try:
        event = loads(text)
    except ValueError as exc:
        raise invalid(f"the event is not valid JSON: {exc}", code=INVALID_EVENT) from None
    if not isinstance(event, dict):
        raise invalid("an event must be a JSON object", code=INVALID_EVENT)
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise invalid("the event has no 'type'", param="type", code=MISSING_PARAMETER,
                      event_id=_event_id(event))
    return event


def _event_id(event: dict[str, Any]) -> str | None:
    value = event.get("event_id")
    return value if isinstance(value, str) else None


def append_audio(event: dict[str, Any], fmt: InputFormat) -> Audio:
    """The audio of an ``input_audio_buffer.append`` event, float32 at the format's rate."""
    data = event.get("audio")
    if not isinstance(data, str):
        raise invalid("input_audio_buffer.append needs 'audio' (base64)", param="audio",
                      code=MISSING_PARAMETER, event_id=_event_id(event))
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("'audio' is not valid base64", param="audio", event_id=_event_id(event)) from None
    try:
        if fmt == "pcm16":
            return pcm16le_to_float(raw)
        if fmt == "g711_ulaw":
            return ulaw_to_float(raw)
        return alaw_to_float(raw)
    except AudioError as exc:
        raise invalid(f"'audio' is not {fmt}: {exc}", param="audio", event_id=_event_id(event)) from None


def ulaw_to_float(data: bytes) -> Audio:
    """G.711 µ-law bytes → float32 (ITU-T G.711 expansion)."""
    u = ~np.frombuffer(data, dtype=np.uint8)
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F).astype(np.int32) << 3) + 0x84) << exponent
    magnitude -= 0x84
    return (np.where(u & 0x80, -magnitude, magnitude) / 32768.0).astype(np.float32)


def alaw_to_float(data: bytes) -> Audio:
    """G.711 A-law bytes → float32 (ITU-T G.711 expansion)."""
    a = np.frombuffer(data, dtype=np.uint8) ^ 0x55
    exponent = ((a >> 4) & 0x07).astype(np.int32)
    mantissa = (a & 0x0F).astype(np.int32)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8,
                         ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(a & 0x80, magnitude, -magnitude) / 32768.0).astype(np.float32)


def apply_update(config: TranscriptionConfig, event: dict[str, Any]) -> TranscriptionConfig:
    """The session after ``session.update`` / ``transcription_session.update`` (validated;
    what the event leaves out keeps its value)."""
    event_id = _event_id(event)
    session = event.get("session")
    if not isinstance(session, dict):
        raise invalid("the update needs a 'session' object", param="session",
                      code=MISSING_PARAMETER, event_id=event_id)
    kind = session.get("type")
    if kind not in (None, "transcription"):
        raise invalid(f"this server only runs transcription sessions, not {kind!r}",
                      param="session.type", code=UNSUPPORTED_INTENT, event_id=event_id)
    changes: dict[str, Any] = {}
    audio = session.get("audio")
    if audio is not None:  # GA layout
        if not isinstance(audio, dict) or not isinstance(audio.get("input", {}), dict):
            raise invalid("session.audio.input must be an object", param="session.audio",
                          event_id=event_id)
        source: dict[str, Any] = audio.get("input", {})
        names = {"format": "format", "transcription": "transcription",
                 "turn_detection": "turn_detection", "noise_reduction": "noise_reduction"}
        prefix = "session.audio.input."
    else:  # beta layout
        source = session
        names = {"format": "input_audio_format", "transcription": "input_audio_transcription",
                 "turn_detection": "turn_detection", "noise_reduction": "input_audio_noise_reduction"}
        prefix = "session."
    if names["format"] in source:
        changes["input_format"] = _format(source[names["format"]], prefix + names["format"], event_id)
    if names["transcription"] in source:
        changes.update(_transcription(source[names["transcription"]], config,
                                      prefix + names["transcription"], event_id))
    if names["turn_detection"] in source:
        changes["turn_detection"] = _turn_detection(source[names["turn_detection"]],
                                                    prefix + names["turn_detection"], event_id)
    if names["noise_reduction"] in source:
        changes["noise_reduction"] = _noise_reduction(source[names["noise_reduction"]],
                                                      prefix + names["noise_reduction"], event_id)
    return replace(config, **changes)


def _format(value: Any, param: str, event_id: str | None) -> InputFormat:
    if isinstance(value, str) and value in INPUT_RATES:
        return value  # type: ignore[return-value]
    if isinstance(value, dict) and value.get("type") in GA_FORMATS:
        fmt = GA_FORMATS[value["type"]]
        rate = value.get("rate")
        if fmt == "pcm16" and rate not in (None, 24000):
            raise invalid("audio/pcm is 24000 Hz", param=param + ".rate", event_id=event_id)
        return fmt
    raise invalid(f"unsupported audio format {value!r} (pcm16, g711_ulaw, g711_alaw or "
                  "{\"type\": \"audio/pcm\" | \"audio/pcmu\" | \"audio/pcma\"})", param=param,
                  event_id=event_id)


def _transcription(value: Any, config: TranscriptionConfig, param: str,
                   event_id: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("must be an object {model, language, prompt}", param=param, event_id=event_id)
    out: dict[str, Any] = {}
    for key in ("model", "language", "prompt"):
        if key in value:
            item = value[key]
            if item is not None and not (isinstance(item, str) and encodable(item)):
                raise invalid(f"{key} must be a string of valid Unicode text",
                              param=f"{param}.{key}", event_id=event_id)
            out[key] = (item or "").strip() or None
    if "model" in out and out["model"] is None:
        out["model"] = config.model
    return out


def _number(value: Any, name: str, lo: float, hi: float, param: str, event_id: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise invalid(f"{name} must be a number in [{lo:g}, {hi:g}]", param=f"{param}.{name}",
                      event_id=event_id)
    return value


def _turn_detection(value: Any, param: str, event_id: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("turn_detection must be an object or null", param=param, event_id=event_id)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise invalid("turn_detection.type must be server_vad (or semantic_vad)",
                      param=param + ".type", event_id=event_id)
    out = dict(DEFAULT_TURN_DETECTION, type=kind)
    if "threshold" in value:
        out["threshold"] = _number(value["threshold"], "threshold", 0.0, 1.0, param, event_id)
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value:
            out[key] = int(_number(value[key], key, 0, 10_000, param, event_id))
    return out


def _noise_reduction(value: Any, param: str, event_id: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("near_field", "far_field", None):
        raise invalid("noise_reduction must be null or {\"type\": \"near_field\" | "
                      "\"far_field\"}", param=param, event_id=event_id)
    return {"type": value.get("type") or "near_field"}


# ----------------------------------------------------------------------------- server events


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("event"), "type": kind, **fields}


def session_body(session_id: str, config: TranscriptionConfig, dialect: Dialect) -> dict[str, Any]:
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt}
    if dialect == "beta":
        return {"id": session_id, "object": "realtime.transcription_session",
                "input_audio_format": config.input_format,
                "input_audio_transcription": transcription,
                "turn_detection": config.turn_detection,
                "input_audio_noise_reduction": config.noise_reduction, "include": None}
    fmt: dict[str, Any] = {"type": {v: k for k, v in GA_FORMATS.items()}[config.input_format]}
    if config.input_format == "pcm16":
        fmt["rate"] = 24000
    return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session",
            "audio": {"input": {"format": fmt, "transcription": transcription,
                                "turn_detection": config.turn_detection,
                                "noise_reduction": config.noise_reduction}},
            "include": []}


def session_event(created: bool, session_id: str, config: TranscriptionConfig,
                  dialect: Dialect) -> dict[str, Any]:
    prefix = "transcription_session" if dialect == "beta" else "session"
    return event(f"{prefix}.{'created' if created else 'updated'}",
                 session=session_body(session_id, config, dialect))


def error_event(err: ProtocolError) -> dict[str, Any]:
    kind = "server_error" if err.code in (SERVER_ERROR, SERVER_BUSY) else "invalid_request_error"
    return event("error", error={"type": kind, "code": str(err.code), "message": err.message,
                                 "param": err.param, "event_id": err.extra.get("event_id")})


def delta_event(item_id: str, delta: str) -> dict[str, Any]:
    return event("conversation.item.input_audio_transcription.delta", item_id=item_id,
                 content_index=0, delta=delta)


def completed_event(item_id: str, transcript: str, seconds: float) -> dict[str, Any]:
    return event("conversation.item.input_audio_transcription.completed", item_id=item_id,
                 content_index=0, transcript=transcript,
                 usage={"type": "duration", "seconds": round(seconds, 3)})


def failed_event(item_id: str, message: str) -> dict[str, Any]:
    return event("conversation.item.input_audio_transcription.failed", item_id=item_id,
                 content_index=0, error={"type": "server_error", "code": TRANSCRIPTION_FAILED,
                                         "message": message, "param": None})
