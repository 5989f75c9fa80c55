"""Wire format of the file-transcription protocol (seed: file-transcription-8767.md).

Every message is a JSON object ``{"type": ..., "data": {...}}``. This module parses what the
client sends into dataclasses and builds what the server sends; it knows nothing of sockets.
Parsing raises :class:`ProtocolError` carrying the seed's own error code where one exists.

Messages beyond the seed (documented in the plugin README): ``task_status`` (ask for a task's
state and result by ``task_id``, e.g. after a reconnect) and ``upload_resume`` (continue a
chunked upload by ``task_id``); the server answers ``task_status`` and ``upload_ready``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from asrhub.protocol import ErrorCodes, ProtocolError, loads

# The seed's error table, plus the codes this server adds (README).
FILE_TOO_LARGE = "file_too_large"
INVALID_FILE_TYPE = "invalid_file_type"
HASH_MISMATCH = "hash_mismatch"
CHUNK_HASH_MISMATCH = "chunk_hash_mismatch"
SESSION_NOT_FOUND = "session_not_found"
TASK_NOT_FOUND = "task_not_found"
INVALID_MESSAGE = "invalid_message"  # not JSON, no type, a field missing or of the wrong type
UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
UPLOAD_INCOMPLETE = "upload_incomplete"  # is_last arrived but chunks are missing
QUEUE_FULL = "queue_full"
TRANSCRIPTION_FAILED = "transcription_failed"
SERVER_BUSY = "server_busy"

OutputFormat = Literal["json", "srt"]
OUTPUT_FORMATS: tuple[str, ...] = ("json", "srt")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_TASK_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")


# The codes of the errors the core itself detects (asrhub.protocol): a message over
# max_message_bytes is file_too_large (the connection stays open), like a chunk too big.
CODES = ErrorCodes(bad_message=INVALID_MESSAGE, too_big=FILE_TOO_LARGE, busy=SERVER_BUSY,
                   internal=TRANSCRIPTION_FAILED, too_many_connections=SERVER_BUSY)


def show(value: Any, limit: int = 40) -> str:
    """``repr`` of a client's value for an error text, shortened without losing its closing
    quote (a lone surrogate is shown escaped, as repr does)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "…"


def _valid_text(value: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(INVALID_MESSAGE, f"data.{name} is not valid Unicode text") from None
    return value


# --------------------------------------------------------------------------- client → server


@dataclass(frozen=True)
class UploadRequest:
    file_name: str
    file_size: int
    file_hash: str
    output_format: OutputFormat = "json"
    force_refresh: bool = False
    chunked: bool = False
    chunk_size: int = 0
    total_chunks: int = 0

    @property
    def extension(self) -> str:
        name = self.file_name.rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[-1].lower() if "." in name else ""


@dataclass(frozen=True)
class UploadData:
    task_id: str
    file_data: bytes


@dataclass(frozen=True)
class UploadChunk:
    task_id: str
    chunk_index: int
    chunk_hash: str
    chunk_data: bytes
    is_last: bool
    chunk_size: int | None = None


@dataclass(frozen=True)
class TaskStatusRequest:
    task_id: str
    output_format: OutputFormat | None = None


@dataclass(frozen=True)
class UploadResume:
    task_id: str


ClientMessage = UploadRequest | UploadData | UploadChunk | TaskStatusRequest | UploadResume


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
           required: bool = True, default: Any = None) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise ProtocolError(INVALID_MESSAGE, f"data.{name} is required")
        return default
    value = data[name]
    # JSON has no int/bool distinction problems except that True is an int in Python.
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(INVALID_MESSAGE, f"data.{name} must be a {want}, got {show(value)}")
    return value


def _task_id(data: dict[str, Any]) -> str:
    task_id = _field(data, "task_id", str)
    if not _TASK_ID.match(task_id):
        raise ProtocolError(INVALID_MESSAGE, "data.task_id is not a task id")
    return task_id


def _md5(data: dict[str, Any], name: str) -> str:
    value = _field(data, name, str)
    if not _MD5.match(value):
        raise ProtocolError(INVALID_MESSAGE, f"data.{name} must be an MD5 hex digest (32 hex digits)")
    return value.lower()


def _b64(data: dict[str, Any], name: str) -> bytes:
    text = _field(data, name, str)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(INVALID_MESSAGE, f"data.{name} is not valid base64") from None


def _output_format(data: dict[str, Any]) -> OutputFormat:
    fmt = _field(data, "output_format", str, required=False, default="json").lower()
    if fmt not in OUTPUT_FORMATS:
        raise ProtocolError(INVALID_MESSAGE, f"data.output_format must be one of "
                                             f"{', '.join(OUTPUT_FORMATS)}, got {show(fmt, 20)}")
    return fmt  # type: ignore[return-value]


def parse_upload_request(data: dict[str, Any]) -> UploadRequest:
    file_name = _valid_text(_field(data, "file_name", str), "file_name")
    if not file_name.strip() or len(file_name) > 255:
        raise ProtocolError(INVALID_MESSAGE, "data.file_name must be 1-255 characters")
    file_size = _field(data, "file_size", int)
    if file_size <= 0:
        raise ProtocolError(INVALID_MESSAGE, "data.file_size must be positive")
    mode = _field(data, "upload_mode", str, required=False, default="single")
    if mode not in ("single", "chunked"):
        raise ProtocolError(INVALID_MESSAGE, f"data.upload_mode must be 'single' or 'chunked', got {show(mode, 20)}")
    chunk_size = total_chunks = 0
    if mode == "chunked":
        chunk_size = _field(data, "chunk_size", int)
        total_chunks = _field(data, "total_chunks", int)
        if chunk_size <= 0 or total_chunks <= 0:
            raise ProtocolError(INVALID_MESSAGE, "data.chunk_size and data.total_chunks must be positive")
        expected = -(-file_size // chunk_size)
        if total_chunks != expected:
            raise ProtocolError(INVALID_MESSAGE, f"data.total_chunks is {total_chunks}, but "
                                                 f"{file_size} bytes in chunks of {chunk_size} make {expected}")
    return UploadRequest(
        file_name=file_name,
        file_size=file_size,
        file_hash=_md5(data, "file_hash"),
        output_format=_output_format(data),
        force_refresh=bool(_field(data, "force_refresh", bool, required=False, default=False)),
        chunked=mode == "chunked",
        chunk_size=chunk_size,
        total_chunks=total_chunks,
    )


def parse_message(text: str) -> ClientMessage:
    """One text frame → a message dataclass, or :class:`ProtocolError`. Total: any text,
    however nested, with NaN or huge numbers, is at worst an ``invalid_message``."""
    try:
        raw = loads(text)
    except ValueError as exc:
        raise ProtocolError(INVALID_MESSAGE, f"the message is not valid JSON ({exc})"[:200]) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ProtocolError(INVALID_MESSAGE, 'a message is a JSON object {"type": ..., "data": {...}}')
    kind = raw["type"]
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_MESSAGE, "data must be a JSON object")
    if kind == "upload_request":
        return parse_upload_request(data)
    if kind == "upload_data":
        return UploadData(task_id=_task_id(data), file_data=_b64(data, "file_data"))
    if kind == "upload_chunk":
        index = _field(data, "chunk_index", int)
        if index < 0:
            raise ProtocolError(INVALID_MESSAGE, "data.chunk_index must be >= 0")
        return UploadChunk(task_id=_task_id(data), chunk_index=index,
                           chunk_hash=_md5(data, "chunk_hash"), chunk_data=_b64(data, "chunk_data"),
                           is_last=bool(_field(data, "is_last", bool, required=False, default=False)),
                           chunk_size=_field(data, "chunk_size", int, required=False))
    if kind == "task_status":
        fmt = _output_format(data) if data.get("output_format") is not None else None
        return TaskStatusRequest(task_id=_task_id(data), output_format=fmt)
    if kind == "upload_resume":
        return UploadResume(task_id=_task_id(data))
    raise ProtocolError(UNKNOWN_MESSAGE_TYPE, f"unknown message type {show(kind)}; expected upload_request, "
                                              "upload_data, upload_chunk, task_status or upload_resume")


# --------------------------------------------------------------------------- server → client


def timestamp(when: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, like the seed's examples."""
    moment = datetime.now(UTC) if when is None else datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def message(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def error(code: str, text: str, **extra: Any) -> dict[str, Any]:
    return message("error", error=code, message=text, **extra)


def connected(**info: Any) -> dict[str, Any]:
    return message("connected", message="已连接到 asrhub 文件转录服务", **info)


def upload_ready(task_id: str, *, chunked: bool, chunk_size: int = 0, total_chunks: int = 0,
                 received_chunks: list[int] | None = None) -> dict[str, Any]:
    if not chunked:
        return message("upload_ready", task_id=task_id, message="准备接收文件数据")
    return message("upload_ready", task_id=task_id, message="准备接收分片数据",
                   chunk_size=chunk_size, total_chunks=total_chunks,
                   received_chunks=received_chunks or [])


def chunk_received(task_id: str, index: int, progress: float, duplicate: bool) -> dict[str, Any]:
    return message("chunk_received", task_id=task_id, chunk_index=index,
                   progress=round(progress, 1), status="duplicate" if duplicate else "received")


def upload_complete(task_id: str, *, chunked: bool) -> dict[str, Any]:
    text = "分片文件上传成功，开始处理" if chunked else "文件上传成功，开始处理"
    return message("upload_complete", task_id=task_id, message=text)


def task_queued(task_id: str, position: int, wait_minutes: float) -> dict[str, Any]:
    return message("task_queued", task_id=task_id, queue_position=position,
                   estimated_wait_minutes=wait_minutes, message=f"任务排队中，位置: {position}")


def task_progress(task_id: str, progress: float, status: str, text: str) -> dict[str, Any]:
    return message("task_progress", task_id=task_id, progress=round(progress, 1), status=status,
                   message=text, timestamp=timestamp())


def task_complete(task_id: str, result: dict[str, Any], finished_at: float | None = None) -> dict[str, Any]:
    return message("task_complete", task_id=task_id, result=result, timestamp=timestamp(finished_at))
