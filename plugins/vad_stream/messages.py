"""The vad_stream wire format (seed: ``vad-stream-9200.md``): JSON commands in, JSON events out.

Client → server: binary PCM int16 LE 16 kHz mono, or a JSON object ``{"command": ...}``.
Server → client: JSON objects with a ``type``. Nothing here touches a socket; parsing raises
the core's :class:`~asrhub.protocol.ProtocolError` carrying the seed's own (integer) error code;
:data:`CODES` maps the errors the core detects itself onto the seed's table.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass
from typing import Any

from asrhub.language import parse_language as _parse_language
from asrhub.protocol import ErrorCodes, ProtocolError, loads
from asrhub.speakers import check_speaker_id


class ErrorCode(enum.IntEnum):
    """The seed's error table."""

    INVALID_JSON = 1  # 无效的 JSON 消息
    PROCESSING = 2  # 处理异常
    UNKNOWN_COMMAND = 3  # 未知命令
    BATCH_NOT_STARTED = 4  # 批量模式未开始
    EMPTY_AUDIO = 5  # 音频数据为空
    AUDIO_TOO_SHORT = 6  # 音频时长过短
    REGISTER_MISSING_USER = 10  # 缺少 user_id 参数（注册）
    REGISTER_NOT_ACTIVE = 11  # 注册模式未激活
    REGISTER_NO_AUDIO = 12  # 未收到音频数据（注册）
    REGISTER_TOO_SHORT = 13  # 注册音频过短（< 3秒）
    EMBEDDING_FAILED = 14  # 声纹特征提取失败
    VERIFY_MISSING_USER = 15  # 缺少 user_id 参数（验证）
    SPEAKER_NOT_REGISTERED = 16  # 目标说话人未注册


CODES = ErrorCodes(
    bad_message=int(ErrorCode.INVALID_JSON),
    too_big=int(ErrorCode.PROCESSING),
    busy=int(ErrorCode.PROCESSING),
    internal=int(ErrorCode.PROCESSING),
    too_many_connections=int(ErrorCode.PROCESSING),
)


COMMANDS = (
    "ping", "reset",
    "batch_start", "batch_end",
    "speaker_register_start", "speaker_register_end",
    "speaker_verify_enable", "speaker_verify_disable", "speaker_list",
)

@dataclass(frozen=True)
class Command:
    """A parsed control command. Fields not used by a command keep their defaults."""

    name: str
    user_id: str | None = None
    required: bool = True
    sample_rate: int | None = None
    language: str | None = None


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_language(value: str) -> str:
    """A seed language name (``"中文"``) or a language code → a language code, or "auto"."""
    try:
        return _parse_language(value)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, str(exc)) from None


def _user_id(data: dict[str, Any], code: ErrorCode) -> str | None:
    """The ``user_id`` field, or None when it is missing or empty (the caller decides). An id
    the voiceprint store would not take (charset, length: :func:`asrhub.speakers.check_speaker_id`)
    is ``code``."""
    value = data.get("user_id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ProtocolError(code, "user_id must be a string")
    try:
        return check_speaker_id(value.strip())
    except ValueError as exc:
        raise ProtocolError(code, f"invalid user_id: {exc}") from None


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:40] + "..."


def parse_command(text: str) -> Command:
    """A text frame → :class:`Command`. Raises :class:`ProtocolError` with the seed's code."""
    try:
        data = loads(text)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"Invalid JSON message: {exc}"[:200]) from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "Invalid JSON message: expected an object")
    name = data.get("command")
    if not isinstance(name, str) or name not in COMMANDS:
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"Unknown command: {_shown(name)}")
    if name == "speaker_register_start":
        return Command(name, user_id=_user_id(data, ErrorCode.REGISTER_MISSING_USER))
    if name == "speaker_verify_enable":
        required = data.get("required", True)
        if not isinstance(required, bool):
            raise ProtocolError(ErrorCode.INVALID_JSON, "required must be true or false")
        return Command(name, user_id=_user_id(data, ErrorCode.VERIFY_MISSING_USER), required=required)
    if name == "batch_start":
        rate = data.get("sample_rate", 16000)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) \
                or rate != int(rate) or not 8000 <= rate <= 48000:
            raise ProtocolError(ErrorCode.INVALID_JSON,
                                "sample_rate must be a whole number of Hz from 8000 to 48000")
        language = data.get("language")
        if language is not None and not isinstance(language, str):
            raise ProtocolError(ErrorCode.INVALID_JSON, "language must be a string")
        return Command(name, sample_rate=int(rate),
                       language=parse_language(language) if language else None)
    return Command(name)


# ----------------------------------------------------------------------------- server → client


def error(code: ErrorCode | int, message: str) -> dict[str, Any]:
    return {"type": "error", "message": message, "code": int(code), "timestamp": now_ms()}


def error_message(err: ProtocolError) -> dict[str, Any]:
    """The seed's error envelope for any error (the route's ``error_message``)."""
    return error(int(err.code), err.message)


def pong() -> dict[str, Any]:
    return {"type": "pong"}


def reset_done(message: str = "State reset successfully") -> dict[str, Any]:
    return {"type": "reset", "message": message}


def speech_start() -> dict[str, Any]:
    return {"type": "vad", "event": "speech_start", "timestamp": now_ms()}


def speech_end(samples: int, sample_rate: int = 16000) -> dict[str, Any]:
    return {"type": "vad", "event": "speech_end", "duration": round(samples / sample_rate, 3),
            "samples": samples, "timestamp": now_ms()}


def result(text: str, segment_id: int, *, is_speeching: bool) -> dict[str, Any]:
    return {"type": "result", "text": text, "is_final": True, "is_speeching": is_speeching,
            "timestamp": now_ms(), "segment_id": segment_id}


def batch_progress(state: str, message: str, received_bytes: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "batch_progress", "state": state}
    if received_bytes is not None:
        out["received_bytes"] = received_bytes
    out["message"] = message
    out["timestamp"] = now_ms()
    return out


def batch_result(text: str, samples: int, sample_rate: int) -> dict[str, Any]:
    return {"type": "batch_result", "text": text, "duration": round(samples / sample_rate, 3),
            "samples": samples, "timestamp": now_ms()}


def register_progress(state: str, message: str, *, received_bytes: int | None = None,
                      duration: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "speaker_register_progress", "state": state}
    if received_bytes is not None:
        out["received_bytes"] = received_bytes
    if duration is not None:
        out["duration"] = round(duration, 3)
    out["message"] = message
    out["timestamp"] = now_ms()
    return out


def register_result(user_id: str, duration: float) -> dict[str, Any]:
    return {"type": "speaker_register_result", "success": True, "user_id": user_id,
            "duration": round(duration, 3), "timestamp": now_ms()}


def verify_enabled(user_id: str, required: bool) -> dict[str, Any]:
    return {"type": "speaker_verify_enabled", "user_id": user_id, "required": required,
            "timestamp": now_ms()}


def verify_disabled() -> dict[str, Any]:
    return {"type": "speaker_verify_disabled", "timestamp": now_ms()}


def verify_result(user_id: str, success: bool, score: float, threshold: float) -> dict[str, Any]:
    return {"type": "speaker_verify_result", "user_id": user_id, "success": success,
            "score": round(score, 4), "threshold": round(threshold, 4), "timestamp": now_ms()}


def speaker_list(speakers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "speaker_list", "speakers": speakers, "count": len(speakers),
            "timestamp": now_ms()}
