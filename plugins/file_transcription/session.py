"""One client connection of the file-transcription protocol, as an explicit state machine.

A :class:`asrhub.protocol.Session`: it receives the :class:`~.service.FileService` and the
kit's :class:`~asrhub.protocol.Channel` and never touches a socket (the core owns the receive
loop, limits and error counting; a refused request is a raised ``ProtocolError``).

Trust: each connection has a ``scope`` (see the ``cache_scope`` setting): tasks of another
scope do not exist for it (``task_not_found`` / ``session_not_found``), the MD5 shortcut and
joining an unfinished upload only look within it. ``client`` is its quota key.

Connection states (:class:`ConnState`)::

    READY ──upload_request──▶ AWAITING_DATA ──upload_data──▶ READY (upload_complete, task watched)
      │                        (single upload)
      └──upload_request──▶ RECEIVING_CHUNKS ──upload_chunk × n──▶ READY (upload_complete, ...)
                            (upload_mode "chunked")

``upload_request`` is accepted in every state (a new upload replaces the one in progress, which
stays resumable if it holds chunks). ``upload_data`` / ``upload_chunk`` name their task, so a
client that reconnected continues an upload with them (or with ``upload_resume``) from READY.
``task_status`` works in every state. The upload itself (chunks received, the task's state)
lives in the service's store, so it survives the connection and the process.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from typing import Any

import structlog

from asrhub.protocol import Channel, CloseInfo, Session

from . import messages as m
from .media import SUPPORTED_EXTENSIONS
from .pipeline import render_result
from .service import PROTOCOL, FileService, Subscriber, TaskState
from .store import TaskRow, data_digests

log = structlog.get_logger("asrhub.file_transcription")
MAX_MISSING_LISTED = 100


class ConnState(enum.Enum):
    READY = "ready"
    AWAITING_DATA = "awaiting_data"
    RECEIVING_CHUNKS = "receiving_chunks"
    CLOSED = "closed"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FileSession(Session):
    def __init__(self, service: FileService, channel: Channel, *, scope: str = "",
                 client: str = "", shortcut: bool = True) -> None:
        self.service = service
        self.settings = service.settings
        self.channel = channel
        self.scope = scope  # trust scope: which tasks and cached results this client may see
        self.client = client  # quota key
        self.shortcut = shortcut  # the seed's MD5 shortcut (and joining by MD5) allowed
        self.state = ConnState.READY
        self.task_id: str | None = None  # the upload this connection is sending
        self.output_format: str | None = None  # what this connection asked for that upload
        self._subscriptions: list[Subscriber] = []
        self.uploads = 0
        self.completed = 0
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0

    # ------------------------------------------------------------------ entry points

    def send(self, message: dict[str, Any]) -> None:
        if self.state is not ConnState.CLOSED:
            self.channel.send_json(message)

    async def on_open(self) -> None:
        self.send(m.connected(
            server="asrhub", protocol=PROTOCOL, supported_formats=list(SUPPORTED_EXTENSIONS),
            output_formats=list(m.OUTPUT_FORMATS), max_file_size=self.settings.max_file_bytes,
            max_message_size=self.settings.max_message_bytes,
            max_chunk_size=self.settings.max_payload_bytes))

    async def on_text(self, text: str) -> None:
        """One text frame; a refused request raises ``ProtocolError`` (one ``error`` message)."""
        await self.handle(m.parse_message(text))

    async def on_binary(self, data: bytes) -> None:
        raise m.ProtocolError(m.INVALID_MESSAGE, "binary frames are not part of this protocol: "
                                                 "send JSON text messages")

    async def on_close(self, info: CloseInfo) -> None:
        # Nothing to flush on shutdown: uploads and tasks are durable (SQLite + spool) and
        # resume after a restart; the client asks for its task again (task_status).
        self.close()

    async def handle(self, msg: m.ClientMessage) -> None:
        if self.state is ConnState.CLOSED:
            return
        if isinstance(msg, m.UploadRequest):
            await self._upload_request(msg)
        elif isinstance(msg, m.UploadData):
            await self._upload_data(msg)
        elif isinstance(msg, m.UploadChunk):
            await self._upload_chunk(msg)
        elif isinstance(msg, m.TaskStatusRequest):
            self._task_status(msg)
        elif isinstance(msg, m.UploadResume):
            self._upload_resume(msg)

    def close(self) -> None:
        """The connection is gone: stop watching tasks; drop an upload that received nothing."""
        if self.state is ConnState.CLOSED:
            return
        for sub in self._subscriptions:
            self.service.unsubscribe(sub)
        self._subscriptions.clear()
        self._release_upload()
        self.state = ConnState.CLOSED

    def summary(self) -> dict[str, Any]:
        return {"uploads": self.uploads, "tasks_completed": self.completed}

    # ------------------------------------------------------------------ uploads

    def _bind(self, task: TaskRow, output_format: str | None) -> None:
        if self.task_id is not None and self.task_id != task.task_id:
            self._release_upload()
        self.task_id, self.output_format = task.task_id, output_format
        self.state = ConnState.RECEIVING_CHUNKS if task.chunked else ConnState.AWAITING_DATA

    def _release_upload(self) -> None:
        if self.task_id is not None and self.state in (ConnState.AWAITING_DATA, ConnState.RECEIVING_CHUNKS):
            self.service.abandon(self.task_id)
        self.task_id, self.output_format = None, None
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.READY

    async def _upload_request(self, req: m.UploadRequest) -> None:
        settings = self.settings
        if req.extension not in SUPPORTED_EXTENSIONS:
            raise m.ProtocolError(m.INVALID_FILE_TYPE, f"{req.file_name}: unsupported file type; "
                                  f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
        if req.file_size > settings.max_file_bytes:
            raise m.ProtocolError(m.FILE_TOO_LARGE, f"{req.file_size} bytes is more than the limit of "
                                  f"{settings.max_file_bytes} bytes ({settings.max_file_size_mb:g} MB)")
        if not req.chunked and req.file_size > settings.max_payload_bytes:
            raise m.ProtocolError(m.FILE_TOO_LARGE, f"{req.file_size} bytes do not fit one message "
                                  f"(at most {settings.max_payload_bytes}); use upload_mode \"chunked\"")
        if req.chunked and req.chunk_size > settings.max_payload_bytes:
            raise m.ProtocolError(m.FILE_TOO_LARGE, f"chunk_size {req.chunk_size} does not fit one "
                                  f"message; at most {settings.max_payload_bytes} bytes")
        if not req.force_refresh and self.shortcut:
            cached = self.service.shortcut(self.scope, req.file_hash, req.file_size)
            if cached is not None:
                task_id, result, finished = cached
                self._release_upload()
                log.info("file_cache_hit", task_id=task_id, file_name=req.file_name, by="md5")
                self.send(m.task_complete(task_id, render_result(result, req.output_format), finished))
                return
            existing = self.service.find_unfinished(self.scope, req.file_hash, req.file_size)
            if existing is not None and self._can_join(existing, req):
                self._bind(existing, req.output_format)
                self._send_ready(existing)
                log.info("file_upload_joined", task_id=existing.task_id, state=existing.state)
                return
        self.service.check_capacity(req.file_size, self.client)
        task = self.service.new_task(req, self.scope, self.client)
        self.uploads += 1
        self._bind(task, req.output_format)
        log.info("file_upload_started", task_id=task.task_id, file_name=req.file_name,
                 size=req.file_size, chunked=req.chunked, total_chunks=req.total_chunks)
        self._send_ready(task)

    @staticmethod
    def _can_join(task: TaskRow, req: m.UploadRequest) -> bool:
        """Same file and settings already uploading (resume it) or waiting / being transcribed
        (acknowledge the upload, skip storing it): same upload layout needed."""
        if task.file_size != req.file_size or task.chunked != req.chunked:
            return False
        return not req.chunked or task.chunk_size == req.chunk_size

    def _send_ready(self, task: TaskRow) -> None:
        received = (self.service.received_chunks(task.task_id) if task.state == TaskState.UPLOADING
                    else list(range(task.total_chunks)))
        self.send(m.upload_ready(task.task_id, chunked=task.chunked, chunk_size=task.chunk_size,
                                 total_chunks=task.total_chunks, received_chunks=received))

    def _visible(self, task_id: str) -> TaskRow | None:
        """The task, if this client's scope may see it."""
        task = self.service.get(task_id)
        return task if task is not None and task.scope == self.scope else None

    def _upload_task(self, task_id: str) -> TaskRow:
        task = self._visible(task_id)
        if task is None or task.state == TaskState.FAILED:
            raise m.ProtocolError(m.SESSION_NOT_FOUND, f"no upload session {task_id}; send "
                                  "upload_request to start again", task_id=task_id)
        return task

    def _format_for(self, task_id: str) -> str | None:
        return self.output_format if task_id == self.task_id else None

    async def _upload_data(self, msg: m.UploadData) -> None:
        task = self._upload_task(msg.task_id)
        if task.chunked:
            raise m.ProtocolError(m.INVALID_MESSAGE, "this upload is chunked: send upload_chunk",
                                  task_id=task.task_id)
        digest, sha256 = await asyncio.to_thread(data_digests, msg.file_data)
        if digest != task.file_hash or len(msg.file_data) != task.file_size:
            raise m.ProtocolError(m.HASH_MISMATCH, f"the data's MD5 is {digest} ({len(msg.file_data)} "
                                  f"bytes), not {task.file_hash} ({task.file_size} bytes) as announced; "
                                  "send the file again", task_id=task.task_id)
        fmt = self._format_for(task.task_id)
        if task.state != TaskState.UPLOADING and task.sha256 and task.sha256 != sha256:
            # Joined a task by MD5, but these bytes are another file (a collision): its own task.
            self._done_uploading()
            raise m.ProtocolError(m.HASH_MISMATCH, "another file with this MD5 is being "
                                  "transcribed; send upload_request with force_refresh: true",
                                  task_id=task.task_id)
        if task.state == TaskState.UPLOADING:
            try:
                await self.service.finish_single(task, msg.file_data, sha256)
            except m.ProtocolError:
                self._done_uploading()
                raise
        self._done_uploading()
        self._upload_finished(task.task_id, fmt, chunked=False)

    async def _upload_chunk(self, msg: m.UploadChunk) -> None:
        task = self._upload_task(msg.task_id)
        if not task.chunked:
            raise m.ProtocolError(m.INVALID_MESSAGE, "this upload is not chunked: send upload_data",
                                  task_id=task.task_id)
        if msg.chunk_index >= task.total_chunks:
            raise m.ProtocolError(m.INVALID_MESSAGE, f"chunk_index {msg.chunk_index} is past the last "
                                  f"chunk ({task.total_chunks - 1})", task_id=task.task_id)
        digest = await asyncio.to_thread(_md5, msg.chunk_data)
        if digest != msg.chunk_hash:
            raise m.ProtocolError(m.CHUNK_HASH_MISMATCH, f"chunk {msg.chunk_index}: MD5 is {digest}, "
                                  f"not {msg.chunk_hash}; send this chunk again",
                                  task_id=task.task_id, chunk_index=msg.chunk_index)
        expected = (task.chunk_size if msg.chunk_index < task.total_chunks - 1
                    else task.file_size - task.chunk_size * (task.total_chunks - 1))
        if len(msg.chunk_data) != expected:
            raise m.ProtocolError(m.INVALID_MESSAGE, f"chunk {msg.chunk_index} must be {expected} "
                                  f"bytes, got {len(msg.chunk_data)}", task_id=task.task_id,
                                  chunk_index=msg.chunk_index)
        if self.task_id != task.task_id:  # a reconnected client continuing its upload
            self._bind(task, self._format_for(task.task_id))
        if task.state != TaskState.UPLOADING:
            # The file is already here (another connection sent it): acknowledge, store nothing.
            self.send(m.chunk_received(task.task_id, msg.chunk_index, 100.0, duplicate=True))
            if msg.is_last:
                fmt = self._format_for(task.task_id)
                self._done_uploading()
                self._upload_finished(task.task_id, fmt, chunked=True)
            return
        duplicate = await self.service.store_chunk(task, msg.chunk_index, msg.chunk_data, digest)
        received = self.service.received_chunks(task.task_id)
        self.send(m.chunk_received(task.task_id, msg.chunk_index,
                                   100.0 * len(received) / task.total_chunks, duplicate))
        if len(received) == task.total_chunks:
            fmt = self._format_for(task.task_id)
            try:
                await self.service.finish_chunked(task)
            except m.ProtocolError as exc:
                if exc.code != m.HASH_MISMATCH:  # after a mismatch the client sends it all again
                    self._done_uploading()
                raise
            self._done_uploading()
            self._upload_finished(task.task_id, fmt, chunked=True)
        elif msg.is_last:
            missing = sorted(set(range(task.total_chunks)) - set(received))
            raise m.ProtocolError(m.UPLOAD_INCOMPLETE, f"{len(missing)} chunk(s) missing; send them "
                                  "(upload_chunk) to complete the upload", task_id=task.task_id,
                                  missing_chunks=missing[:MAX_MISSING_LISTED])

    def _done_uploading(self) -> None:
        self.task_id, self.output_format = None, None
        self.state = ConnState.READY

    def _upload_finished(self, task_id: str, fmt: str | None, *, chunked: bool) -> None:
        self.send(m.upload_complete(task_id, chunked=chunked))
        self._watch(task_id, fmt)

    # ------------------------------------------------------------------ tasks

    def _watch(self, task_id: str, fmt: str | None) -> None:
        """Tell where the task stands now and subscribe to what comes next."""
        task = self.service.get(task_id)
        if task is None:
            return
        if task.state == TaskState.COMPLETED:
            result = self.service.result_of(task)
            if result is not None:
                self.send(self.service.complete_message(task, result, fmt))
            return
        if task.state == TaskState.FAILED:
            code, text = self.service.failure(task)
            self.send(m.error(code, text, task_id=task_id))
            return
        if task.state not in (TaskState.QUEUED, TaskState.RUNNING):
            return
        sub = Subscriber(self.send, fmt, self._on_complete)
        self._subscriptions.append(sub)
        self.service.subscribe(task_id, sub)
        if task.state == TaskState.QUEUED:
            self.send(self.service.queued_message(task_id))
        else:
            progress = self.service.progress_message(task_id)
            if progress is not None:
                self.send(progress)

    def _on_complete(self, audio_s: float, processing_s: float) -> None:
        self.completed += 1
        self.audio_seconds += audio_s
        self.processing_seconds += processing_s

    def _task_status(self, msg: m.TaskStatusRequest) -> None:
        task = self._visible(msg.task_id)
        if task is None:
            raise m.ProtocolError(m.TASK_NOT_FOUND, f"no task {msg.task_id}", task_id=msg.task_id)
        info: dict[str, Any] = {"task_id": task.task_id, "status": task.state,
                                "progress": round(task.progress, 1), "file_name": task.file_name,
                                "file_size": task.file_size, "duration": task.duration,
                                "created_at": m.timestamp(task.created_at)}
        if task.state == TaskState.UPLOADING:
            received = self.service.received_chunks(task.task_id)
            info.update(upload_mode="chunked" if task.chunked else "single",
                        received_chunks=received, total_chunks=task.total_chunks)
        elif task.state == TaskState.QUEUED:
            info["queue_position"], info["estimated_wait_minutes"] = self.service.queue_info(task.task_id)
        elif task.state == TaskState.RUNNING:
            progress = self.service.progress_message(task.task_id)
            if progress is not None:
                info["progress"] = progress["data"]["progress"]
        elif task.state == TaskState.FAILED:
            info["error"], info["message"] = self.service.failure(task)
        self.send(m.message("task_status", **info))
        if task.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.COMPLETED):
            self._watch(task.task_id, msg.output_format)

    def _upload_resume(self, msg: m.UploadResume) -> None:
        task = self._upload_task(msg.task_id)
        if task.state == TaskState.UPLOADING:
            self._bind(task, None)
            self._send_ready(task)
            return
        self._upload_finished(task.task_id, None, chunked=task.chunked)
