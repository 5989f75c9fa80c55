"""The file service: durable uploads and tasks, the job queue, and who gets told what.

One per process. It owns the :class:`~.store.TaskStore` (SQLite + spool), a queue with its own
concurrency limit (``concurrency`` worker coroutines), the measured throughput (real-time
factor, persisted) behind ``estimated_wait_minutes``, and the subscribers of each task (the
connections that want its progress and result). On start it resumes what a crash or restart
interrupted: running tasks go back to the queue, queued tasks are queued again, finished
results stay cached.

Each task moves through :class:`TaskState`; :meth:`FileService._transition` checks every move.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from asrhub.audio import AudioError
from asrhub.executor import ExecutorClosed

from . import messages as m
from .media import probe
from .pipeline import FileTranscriber, render_result
from .settings import FileTranscriptionSettings
from .store import TaskRow, TaskStore, file_digests, write_chunk, write_file

log = structlog.get_logger("asrhub.file_transcription")

PROTOCOL = "file_transcription"
PRIOR_RTF = 0.3  # processing seconds per audio second until one task has been measured
RTF_WEIGHT = 0.3  # weight of the newest task in the moving average
PROGRESS_STEP = 1.0  # percent between two task_progress messages
PROGRESS_INTERVAL = 2.0  # ... or seconds
BYTES_PER_SECOND_GUESS = 16_000  # audio length of a file the probe could not time (128 kbit/s)


class TaskState(enum.StrEnum):
    UPLOADING = "uploading"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.UPLOADING: frozenset({TaskState.QUEUED, TaskState.FAILED}),
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.FAILED}),
    # Back to QUEUED when the server stops (or died) while transcribing: the task resumes.
    TaskState.RUNNING: frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.QUEUED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
}


@dataclass(eq=False)
class Subscriber:
    """A connection that wants a task's progress and result."""

    send: Callable[[dict[str, Any]], None]
    output_format: str | None = None  # None: the task's own
    on_complete: Callable[[float, float], None] | None = None  # (audio s, processing s)


@dataclass
class RunningTask:
    task_id: str
    duration: float | None
    started: float = field(default_factory=time.monotonic)
    progress: float = 0.0
    stage: str = ""
    sent_progress: float = -100.0
    sent_at: float = 0.0


class FileService:
    def __init__(self, hub: Any, settings: FileTranscriptionSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.transcriber = FileTranscriber(hub, settings)
        self._store: TaskStore | None = None
        self.rtf = PRIOR_RTF
        self._pending: list[str] = []
        self._running: dict[str, RunningTask] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._upload_locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._janitor: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._announced: dict[str, int] = {}  # the queue position last told per task

    @property
    def store(self) -> Any:  # TaskStore, or RedisTaskStore in a cluster (same interface)
        if self._store is None:
            raise RuntimeError("the file service is not started")
        return self._store

    @property
    def root(self) -> Path:
        return self.hub.state_dir / "file_transcription"

    # ------------------------------------------------------------------ lifecycle

    async def _open_store(self) -> Any:
        """This box's SQLite + spool (:class:`ClusterFileService` opens Redis + a shared spool)."""
        return await asyncio.to_thread(TaskStore, self.root)

    async def start(self) -> None:
        self._store = await self._open_store()
        try:
            self.rtf = float(self.store.get_meta("rtf") or PRIOR_RTF)
        except m.ProtocolError:  # a cluster's Redis is away: measured again later
            self.rtf = PRIOR_RTF
        await self._recover()
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._worker(), name=f"file-worker-{i}")
                         for i in range(self.settings.concurrency)]
        self._janitor = loop.create_task(self._expire_loop(), name="file-janitor")
        self._ticker = loop.create_task(self._tick_loop(), name="file-queue-updates")
        self._background = [loop.create_task(coro, name=name) for name, coro in self._extra_loops()]
        log.info("file_service_started", root=str(self.store.root), queued=len(self._pending),
                 concurrency=self.settings.concurrency, rtf=round(self.rtf, 4))

    def _extra_loops(self) -> list[tuple[str, Any]]:
        """More background coroutines (the cluster's event listener, claim keeper)."""
        return []

    async def stop(self) -> None:
        self._stopping = True
        tasks: set[asyncio.Task[None]] = {*self._workers, *self._background,
                                          *(t for t in (self._janitor, self._ticker) if t is not None)}
        while tasks:
            # Cancel until they are gone: on Python 3.11 asyncio.wait_for (the executor's wait
            # for room) can swallow a cancellation that lands as its inner wait completes.
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.5)
        self._workers, self._janitor, self._ticker, self._background = [], None, None, []
        if self._store is not None:
            self._store.close()
            self._store = None

    async def _recover(self) -> None:
        store = self.store
        for task in store.tasks_in(TaskState.RUNNING):
            # The process died while transcribing this file; it may be the file's fault.
            if task.attempts >= self.settings.max_attempts:
                self._fail(task, m.TRANSCRIPTION_FAILED,
                           f"the server stopped {task.attempts} times while transcribing this file")
            else:
                self._transition(task, TaskState.QUEUED, progress=0.0)
                log.warning("file_task_resumed", task_id=task.task_id, attempts=task.attempts)
        for task in store.tasks_in(TaskState.QUEUED):
            if store.audio_path(task).is_file():
                self._pending.append(task.task_id)
            else:
                self._fail(task, m.TRANSCRIPTION_FAILED, "the uploaded file was lost")
        self._expire_uploads()
        # Spool folders of tasks that no longer need them (finished, or never recorded).
        keep = {t.task_id for t in store.tasks_in(TaskState.UPLOADING, TaskState.QUEUED)}
        for folder in store.uploads.iterdir():
            if folder.name not in keep:
                await asyncio.to_thread(shutil.rmtree, folder, True)

    def _expire_uploads(self) -> None:
        """Uploads that received nothing for ``upload_idle_minutes`` are dropped: they no
        longer hold a place in the queue, the client's quota or the disk reservation."""
        cutoff = time.time() - self.settings.upload_idle_minutes * 60
        for task in self.store.stale_uploads(cutoff):
            if self._busy(task.task_id):
                continue  # being written right now
            self._upload_locks.pop(task.task_id, None)
            log.info("file_upload_expired", task_id=task.task_id, file_name=task.file_name,
                     idle_minutes=self.settings.upload_idle_minutes)
            self.store.delete_task(task.task_id)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.settings.upload_idle_minutes * 60 / 4))
            try:
                self._expire_uploads()
            except m.ProtocolError:  # a cluster's Redis is away: next round
                pass

    async def _tick_loop(self) -> None:
        """The seed's client gives up after 300 s without a message: tell every watcher of a
        waiting task its place (and of a running one its progress) at least this often."""
        interval = self.settings.queue_update_s
        while True:
            await asyncio.sleep(interval)
            for task_id in list(self._pending):
                if self._subscribers.get(task_id):
                    self._publish(task_id, self.queued_message(task_id))
            now = time.monotonic()
            for run in list(self._running.values()):
                if self._subscribers.get(run.task_id) and now - run.sent_at >= interval:
                    run.sent_at = now
                    self._publish(run.task_id, m.task_progress(
                        run.task_id, run.progress, "processing", run.stage or "正在处理音频..."))

    # ------------------------------------------------------------------ state

    def _transition(self, task: TaskRow, new: TaskState, **fields: Any) -> None:
        old = TaskState(task.state)
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"task {task.task_id}: {old} → {new} is not allowed")
        self.store.update(task.task_id, state=str(new), **fields)
        task.state = str(new)

    def _fail(self, task: TaskRow, code: str, text: str, *, count: bool = True) -> None:
        progress = self._running[task.task_id].progress if task.task_id in self._running else 0.0
        self._transition(task, TaskState.FAILED, error=json.dumps({"error": code, "message": text}),
                         finished_at=time.time(), progress=round(progress, 1))
        log.warning("file_task_failed", task_id=task.task_id, error=code, reason=text)
        if count:
            self.hub.count_error(PROTOCOL, code)
        self._end(task.task_id, 0.0)
        self.store.remove_spool(task.task_id)

    @staticmethod
    def failure(task: TaskRow) -> tuple[str, str]:
        try:
            info = json.loads(task.error or "{}")
            return info.get("error", m.TRANSCRIPTION_FAILED), info.get("message", "")
        except json.JSONDecodeError:
            return m.TRANSCRIPTION_FAILED, task.error or ""

    # ------------------------------------------------------------------ lookups

    def cache_key(self, sha256: str) -> str:
        """The same bytes (SHA-256 of what the hub received) under the same engine, model,
        language and diarization setting."""
        engine = self.hub.engine_name("asr", self.settings.asr_engine or None)
        try:
            model = getattr(self.hub.settings_for("asr", engine), "model", "")
        except KeyError:
            model = ""
        diarize = "diarize" if self.settings.diarization else "single"
        return f"sha256:{sha256}|{engine}|{model}|{self.settings.language}|{diarize}"

    def _current_settings(self, cache_key: str) -> bool:
        return cache_key.split("|", 1)[-1] == self.cache_key("").split("|", 1)[-1]

    def cached(self, cache_key: str) -> tuple[str, dict[str, Any], float] | None:
        return self.store.get_result(cache_key)

    def shortcut(self, scope: str, file_hash: str, file_size: int) -> tuple[str, dict[str, Any], float] | None:
        """The seed's MD5 shortcut: a result for a file announced by MD5 and size, only if a
        client of the same ``scope`` sent those very bytes before (never across scopes, never
        for a size that differs, never when two different files share the MD5)."""
        keys = {k for k in self.store.shortcut_keys(scope, file_hash, file_size)
                if self._current_settings(k)}
        if len(keys) != 1:
            if len(keys) > 1:
                log.warning("file_md5_collision", file_hash=file_hash, files=len(keys))
            return None
        return self.cached(keys.pop())

    def get(self, task_id: str) -> TaskRow | None:
        return self.store.get(task_id)

    def result_of(self, task: TaskRow) -> dict[str, Any] | None:
        found = self.store.get_result(task.cache_key)
        return found[1] if found is not None else None

    def queue_info(self, task_id: str) -> tuple[int, float]:
        """(1-based position among the waiting tasks, estimated wait in minutes) from the
        remaining audio ahead of it and the measured real-time factor."""
        try:
            index = self._pending.index(task_id)
        except ValueError:
            return 0, 0.0
        ahead = [self._remaining_audio(r) for r in self._running.values()]
        ahead += [self._queued_audio(t) for t in self._pending[:index]]
        free = self.settings.concurrency - len(self._running)
        if index < free:
            return index + 1, 0.0
        seconds = sum(ahead) * self.rtf / self.settings.concurrency
        return index + 1, math.ceil(seconds / 60 * 100) / 100  # any wait shows as >= 0.01

    def _remaining_audio(self, run: RunningTask) -> float:
        duration = run.duration if run.duration is not None else 60.0
        return duration * (1.0 - run.progress / 100.0)

    def _queued_audio(self, task_id: str) -> float:
        task = self.store.get(task_id)
        if task is None:
            return 0.0
        if task.duration is not None:
            return task.duration
        return task.file_size / BYTES_PER_SECOND_GUESS

    # ------------------------------------------------------------------ uploads

    def check_capacity(self, file_size: int, client: str) -> None:
        """Admission of a new upload: the queue, the client's quota (tasks and declared bytes),
        and free disk beyond what every upload in progress has declared (reserved)."""
        settings = self.settings
        self._expire_uploads()
        if self.store.count_pending() >= settings.max_pending_tasks:
            raise m.ProtocolError(m.QUEUE_FULL, f"{settings.max_pending_tasks} files are already "
                                                "waiting; try again later")
        count, declared = self.store.pending_of(client)
        if count >= settings.max_pending_per_client:
            raise m.ProtocolError(m.QUEUE_FULL, f"this client already has {count} files uploading "
                                  f"or waiting (limit {settings.max_pending_per_client}); try again "
                                  "when one is done")
        if declared + file_size > settings.client_quota_bytes:
            raise m.ProtocolError(m.QUEUE_FULL, f"this client's files uploading or waiting would "
                                  f"take {declared + file_size} bytes, over its quota of "
                                  f"{settings.client_quota_bytes}; try again when one is done")
        free = shutil.disk_usage(self.store.uploads).free
        reserved = self.store.reserved_bytes()
        if free - reserved - settings.min_free_disk_bytes < file_size:
            log.warning("file_disk_full", free=free, reserved=reserved, wanted=file_size)
            raise m.ProtocolError(m.SERVER_BUSY, "not enough disk space for this file now")

    def new_task(self, req: m.UploadRequest, scope: str, client: str) -> TaskRow:
        return self.store.create_task(
            task_id=str(uuid.uuid4()), file_name=req.file_name, file_size=req.file_size,
            file_hash=req.file_hash, output_format=req.output_format, chunked=req.chunked,
            chunk_size=req.chunk_size, total_chunks=req.total_chunks, scope=scope, client=client,
            force_refresh=req.force_refresh)

    def find_unfinished(self, scope: str, file_hash: str, file_size: int) -> TaskRow | None:
        return self.store.find_unfinished(scope, file_hash, file_size)

    def received_chunks(self, task_id: str) -> list[int]:
        return self.store.received_chunks(task_id)

    def abandon(self, task_id: str) -> None:
        """Drop an upload that received nothing (its client went away or started another):
        it would only hold a place among the pending tasks until it expired."""
        try:
            self._abandon(task_id)
        except m.ProtocolError:  # a cluster's Redis is away: it expires later
            pass

    def _abandon(self, task_id: str) -> None:
        task = self.store.get(task_id)
        if (task is not None and task.state == TaskState.UPLOADING
                and not self.store.received_chunks(task_id) and not self._busy(task_id)):
            self._upload_locks.pop(task_id, None)
            self.store.delete_task(task_id)

    def _busy(self, task_id: str) -> bool:
        lock = self._upload_locks.get(task_id)
        return lock is not None and lock.locked()

    def _lock(self, task_id: str) -> asyncio.Lock:
        return self._upload_locks.setdefault(task_id, asyncio.Lock())

    def _finishing(self, task_id: str) -> Any:
        """Held while an upload is verified and queued (a cluster adds a lock in Redis: two
        instances may hold connections of the same upload)."""
        return self._lock(task_id)

    async def store_chunk(self, task: TaskRow, index: int, data: bytes, md5: str) -> bool:
        """Write one verified chunk; True if it was already stored (a duplicate)."""
        async with self._lock(task.task_id):
            if self.store.chunk_md5(task.task_id, index) == md5:
                return True
            await asyncio.to_thread(write_chunk, self.store.partial_path(task.task_id),
                                    index * task.chunk_size, data)
            self.store.record_chunk(task.task_id, index, len(data), md5)
            return False

    async def finish_chunked(self, task: TaskRow) -> None:
        """All chunks are in: verify the whole file, probe it, queue it. Raises ProtocolError."""
        async with self._finishing(task.task_id):
            current = self.store.get(task.task_id)
            if current is None or current.state != TaskState.UPLOADING:
                return  # another connection finished it
            partial = self.store.partial_path(task.task_id)
            digest, sha, size = await asyncio.to_thread(file_digests, partial)
            if digest != task.file_hash or size != task.file_size:
                # Start the upload over: the client re-sends every chunk with the same task_id.
                self.store.forget_chunks(task.task_id)
                await asyncio.to_thread(partial.unlink, True)
                raise m.ProtocolError(m.HASH_MISMATCH, f"the file's MD5 is {digest} ({size} bytes), "
                                      f"not {task.file_hash} ({task.file_size} bytes) as announced; "
                                      "send the file again", task_id=task.task_id)
            target = self.store.audio_path(task)
            await asyncio.to_thread(partial.replace, target)
            await self._queue_upload(current, target, sha)
        self._upload_locks.pop(task.task_id, None)

    async def finish_single(self, task: TaskRow, data: bytes, sha256: str) -> None:
        """The whole file arrived (already verified against its hash): spool, probe, queue."""
        async with self._finishing(task.task_id):
            current = self.store.get(task.task_id)
            if current is None or current.state != TaskState.UPLOADING:
                return
            target = self.store.audio_path(task)
            await asyncio.to_thread(write_file, target, data)
            await self._queue_upload(current, target, sha256)
        self._upload_locks.pop(task.task_id, None)

    async def _queue_upload(self, task: TaskRow, path: Path, sha256: str) -> None:
        key = self.cache_key(sha256)
        self.store.update(task.task_id, sha256=sha256, cache_key=key)
        task.sha256, task.cache_key = sha256, key
        try:
            duration = await asyncio.to_thread(probe, path)
        except AudioError as exc:
            self._fail(task, m.INVALID_FILE_TYPE, str(exc), count=False)  # the session counts it
            raise m.ProtocolError(m.INVALID_FILE_TYPE, f"{task.file_name}: not a supported audio "
                                  f"file ({exc})", task_id=task.task_id) from None
        self._transition(task, TaskState.QUEUED, queued_at=time.time(), duration=duration)
        if self._from_cache(task):
            return
        self._enqueue(task.task_id)
        log.info("file_task_queued", task_id=task.task_id, file_name=task.file_name,
                 size=task.file_size, audio_s=round(duration, 2) if duration else None)

    def _enqueue(self, task_id: str) -> None:
        """A queued task goes to the workers (here: this process's list)."""
        self._pending.append(task_id)
        self._wake.set()

    # ------------------------------------------------------------------ subscribers

    def subscribe(self, task_id: str, subscriber: Subscriber) -> None:
        subs = self._subscribers.setdefault(task_id, [])
        if subscriber not in subs:
            subs.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        for task_id, subs in list(self._subscribers.items()):
            if subscriber in subs:
                subs.remove(subscriber)
            if not subs:
                del self._subscribers[task_id]

    def _publish(self, task_id: str, message: dict[str, Any]) -> None:
        """Send to every watcher of the task (a cluster: on every instance)."""
        self._deliver(task_id, message)

    def _deliver(self, task_id: str, message: dict[str, Any]) -> None:
        """Send to this process's watchers of the task."""
        for sub in list(self._subscribers.get(task_id, ())):
            sub.send(message)

    def _end(self, task_id: str, elapsed: float) -> None:
        """The task completed or failed (its final state is stored): tell its watchers once."""
        self._deliver_end(task_id, elapsed)

    def _deliver_end(self, task_id: str, elapsed: float) -> None:
        """The final messages to this process's watchers of a finished task, who then stop
        watching (``task_progress`` completed + ``task_complete`` in each one's format, or
        ``task_progress`` failed + the task's ``error``)."""
        subs = self._subscribers.pop(task_id, [])
        if not subs:
            return
        task = self.store.get(task_id)
        if task is None:
            return
        if task.state == TaskState.COMPLETED:
            result = self.result_of(task)
            if result is None:
                return
            duration = float(result.get("duration") or task.duration or 0.0)
            for sub in subs:
                sub.send(m.task_progress(task_id, 100.0, "completed", "转录完成"))
                sub.send(self.complete_message(task, result, sub.output_format))
                if sub.on_complete is not None:
                    sub.on_complete(duration, elapsed)
        elif task.state == TaskState.FAILED:
            code, text = self.failure(task)
            for sub in subs:
                sub.send(m.task_progress(task_id, task.progress, "failed", text))
                sub.send(m.error(code, text, task_id=task_id))

    def progress_message(self, task_id: str) -> dict[str, Any] | None:
        run = self._running.get(task_id)
        if run is None:
            return None
        return m.task_progress(task_id, run.progress, "processing", run.stage or "正在处理音频...")

    def complete_message(self, task: TaskRow, result: dict[str, Any], fmt: str | None) -> dict[str, Any]:
        return m.task_complete(task.task_id, render_result(result, fmt or task.output_format),
                               task.finished_at)

    def queued_message(self, task_id: str) -> dict[str, Any]:
        position, wait = self.queue_info(task_id)
        self._announced[task_id] = position
        return m.task_queued(task_id, position, wait)

    def _notify_positions(self) -> None:
        """Tell the watchers of each waiting task whose place in the queue changed."""
        waiting = set(self._pending)
        for task_id in list(self._announced):
            if task_id not in waiting:
                del self._announced[task_id]
        for index, task_id in enumerate(self._pending):
            if self._subscribers.get(task_id) and self._announced.get(task_id) != index + 1:
                self._publish(task_id, self.queued_message(task_id))

    # ------------------------------------------------------------------ the queue

    async def _worker(self) -> None:
        while not self._stopping:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            task_id = self._pending.pop(0)
            await self._run(task_id)
            self._notify_positions()

    def _progress(self, run: RunningTask, percent: float, stage: str) -> None:
        """Called on the loop (the engine's callback hops here from its worker thread)."""
        run.progress = max(run.progress, min(percent, 99.9))
        now = time.monotonic()
        if (run.progress - run.sent_progress < PROGRESS_STEP and stage == run.stage
                and now - run.sent_at < PROGRESS_INTERVAL):
            return
        run.stage, run.sent_progress, run.sent_at = stage, run.progress, now
        if self._store is not None:
            try:
                self.store.update(run.task_id, progress=round(run.progress, 1))
            except m.ProtocolError:  # a cluster's Redis is away: progress is not worth failing for
                pass
        self._publish(run.task_id, m.task_progress(run.task_id, run.progress, "processing", stage))

    def _from_cache(self, task: TaskRow) -> bool:
        """These bytes were transcribed before (by anyone: the client has sent them): complete
        the task with that result instead of transcribing again."""
        found = self.cached(task.cache_key) if task.cache_key and not task.force_refresh else None
        if found is None:
            return False
        _, result, _ = found
        self._transition(task, TaskState.RUNNING, started_at=time.time())
        log.info("file_cache_hit", task_id=task.task_id, by="sha256")
        self._complete(task, result, float(result.get("duration") or 0.0), 0.0, measured=False)
        return True

    async def _run(self, task_id: str) -> None:
        task = self.store.get(task_id)
        if task is None or task.state != TaskState.QUEUED:
            return
        if not task.sha256 or not self._current_settings(task.cache_key):
            # Queued by an older version (MD5-keyed) or before a settings change.
            try:
                _, sha, _ = await asyncio.to_thread(file_digests, self.store.audio_path(task))
            except OSError as exc:
                self._fail(task, m.TRANSCRIPTION_FAILED, f"the uploaded file was lost ({exc.strerror})")
                return
            task.sha256, task.cache_key = sha, self.cache_key(sha)
            self.store.update(task_id, sha256=sha, cache_key=task.cache_key)
        if self._from_cache(task):
            self._notify_positions()
            return
        attempts = task.attempts
        self._transition(task, TaskState.RUNNING, started_at=time.time(), attempts=attempts + 1,
                         progress=0.0)
        run = RunningTask(task_id, task.duration)
        self._running[task_id] = run
        self._notify_positions()
        started = time.perf_counter()
        try:
            with structlog.contextvars.bound_contextvars(task_id=task_id):
                # Subtitles are cut at word times: ask the engine for them when the task
                # was uploaded for SRT (other formats skip the alignment's cost).
                result, duration = await self.transcriber.transcribe(
                    self.store.audio_path(task), lambda p, s: self._progress(run, p, s),
                    words=task.output_format == "srt")
        except (asyncio.CancelledError, ExecutorClosed):
            # The server is stopping: not the file's fault; it resumes on the next start.
            if self._store is not None:
                self._transition(task, TaskState.QUEUED, attempts=attempts, progress=0.0)
            log.info("file_task_interrupted", task_id=task_id)
            raise
        except AudioError as exc:
            self._fail(task, m.INVALID_FILE_TYPE, f"{task.file_name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged with traceback
            log.exception("file_task_error", task_id=task_id)
            self._fail(task, m.TRANSCRIPTION_FAILED, f"{exc.__class__.__name__}: {exc}")
        else:
            self._complete(task, result, duration, time.perf_counter() - started)
        finally:
            self._running.pop(task_id, None)

    def _complete(self, task: TaskRow, result: dict[str, Any], duration: float, elapsed: float, *,
                  measured: bool = True) -> None:
        if not self.store.finish(task.task_id, task.cache_key, result, duration):
            # A cluster: another instance finished this task first (it re-claimed it from us).
            log.warning("file_task_finished_elsewhere", task_id=task.task_id)
            return
        task.state, task.finished_at = str(TaskState.COMPLETED), time.time()
        if measured and duration > 1.0:
            self.rtf = (1 - RTF_WEIGHT) * self.rtf + RTF_WEIGHT * (elapsed / duration)
            try:
                self.store.set_meta("rtf", f"{self.rtf:.6f}")
            except m.ProtocolError:  # a cluster's Redis just went away: saved next time
                pass
        log.info("file_task_completed", task_id=task.task_id, audio_s=round(duration, 2),
                 processing_s=round(elapsed, 3), rtf=round(elapsed / duration, 4) if duration else None,
                 segments=len(result["segments"]), speakers=len(result["speakers"]))
        self._end(task.task_id, elapsed)
        self.store.remove_spool(task.task_id)
