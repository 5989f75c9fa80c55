"""The vad_stream wire format (seed: ``vad-stream-9200.md``): JSON commands in, JSON events out.

Client → server: binary PCM int16 LE 16 kHz mono, or a JSON object ``{"command": ...}``.
Server → client: JSON objects with a ``type``. Nothing here touches a socket; parsing raises
:class:`ProtocolError` carrying the seed's own error code.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from typing import Any


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


class ProtocolError(Exception):
    """A client-visible error: becomes ``{"type": "error", "code": ..., "message": ...}``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


COMMANDS = (
    "ping", "reset",
    "batch_start", "batch_end",
    "speaker_register_start", "speaker_register_end",
    "speaker_verify_enable", "speaker_verify_disable", "speaker_list",
)

MAX_USER_ID_LENGTH = 128

# batch_start "language": the seed's names (默认 "中文") and plain language codes.
LANGUAGE_NAMES = {
    "中文": "zh", "普通话": "zh", "汉语": "zh", "chinese": "zh", "mandarin": "zh",
    "英文": "en", "英语": "en", "english": "en",
    "粤语": "yue", "cantonese": "yue",
    "日文": "ja", "日语": "ja", "japanese": "ja",
    "韩文": "ko", "韩语": "ko", "korean": "ko",
    "自动": "auto", "auto": "auto",
}


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
    key = value.strip().lower()
    if key in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[key]
    if 2 <= len(key) <= 3 and key.isascii() and key.isalpha():
        return key
    raise ProtocolError(ErrorCode.INVALID_JSON, f"unsupported language: {value!r}")


def _user_id(data: dict[str, Any], code: ErrorCode) -> str | None:
    """The ``user_id`` field, or None when it is missing or empty (the caller decides)."""
    value = data.get("user_id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ProtocolError(code, "user_id must be a string")
    value = value.strip()
    if len(value) > MAX_USER_ID_LENGTH:
        raise ProtocolError(code, f"user_id longer than {MAX_USER_ID_LENGTH} characters")
    return value


def parse_command(text: str) -> Command:
    """A text frame → :class:`Command`. Raises :class:`ProtocolError` (code 1 or 3)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "Invalid JSON message") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "Invalid JSON message: expected an object")
    name = data.get("command")
    if not isinstance(name, str) or name not in COMMANDS:
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"Unknown command: {name}")
    if name == "speaker_register_start":
        return Command(name, user_id=_user_id(data, ErrorCode.REGISTER_MISSING_USER))
    if name == "speaker_verify_enable":
        required = data.get("required", True)
        if not isinstance(required, bool):
            raise ProtocolError(ErrorCode.INVALID_JSON, "required must be true or false")
        return Command(name, user_id=_user_id(data, ErrorCode.VERIFY_MISSING_USER), required=required)
    if name == "batch_start":
        rate = data.get("sample_rate", 16000)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate != int(rate) \
                or not 8000 <= rate <= 48000:
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
