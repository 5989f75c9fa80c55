"""The file service of a cluster: instances behind a load balancer share file tasks in Redis.

Chosen at setup when ``[cluster] redis_url`` and ``shared_spool_dir`` are set; a single box keeps
:class:`~.service.FileService` (SQLite + its own spool, no Redis). Same upload, transition and
completion logic; what differs:

- **store**: :class:`~.store_redis.RedisTaskStore` (tasks, chunks, results, the hash cache) and
  the shared spool directory;
- **queue**: a Redis Stream (``file:queue``) with one consumer group; each worker of each
  instance reads the next entry (``XREADGROUP``), so whichever instance has a free worker takes
  the next task. A running task's entry stays pending under its worker, which re-confirms it
  every ``claim_timeout_s / 3``; an entry nobody confirmed for ``claim_timeout_s`` (its
  instance died) is taken by another worker (``XAUTOCLAIM``) and the task runs again there
  (``max_attempts`` still bounds a file that kills instances). The result is stored by a
  script that completes a task once: a slow former owner that finishes later tells nobody;
- **events**: progress, queue positions and the end of a task are published on one pub/sub
  channel; every instance forwards them to the watchers connected to it. Every
  ``queue_update_s`` each instance also checks its watchers' tasks in Redis, so an event lost
  while Redis was away (or while an instance died) still reaches them: one ``task_complete``.

Redis unreachable: requests that need it get ``server_busy`` saying so; workers and listeners
wait and retry; nothing received is dropped (chunks and files are on the shared spool, tasks
and the stream in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from asrhub.executor import ExecutorClosed

from . import messages as m
from .service import FileService, TaskState
from .store_redis import RedisTaskStore, StoreUnavailable

log = structlog.get_logger("asrhub.file_transcription")

GROUP = "file-workers"
BLOCK_MS = 1000  # one XREADGROUP wait (shorter than the client's socket timeout)
MAX_BACKOFF = 5.0
FINISH_LOCK_S = 120.0  # longest a verification of a whole upload may hold its lock

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Re-confirm a pending entry only while this worker still owns it (XCLAIM alone would steal
# it back from the instance that re-claimed it).
KEEP = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
  return 1
end
return 0
"""


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


class ClusterFileService(FileService):
    def __init__(self, hub: Any, settings: Any) -> None:
        super().__init__(hub, settings)
        self.cluster = hub.cluster
        self.stream = self.cluster.key("file", "queue")
        self.channel = self.cluster.key("file", "events")
        self.workers_key = self.cluster.key("file", "workers")
        self._claims: dict[str, tuple[str, str]] = {}  # task_id -> (entry id, consumer)
        self._keep = self.cluster.sync().register_script(KEEP)
        self._unlock = self.cluster.sync().register_script(UNLOCK)
        self._warned: set[str] = set()
        self._worker_numbers = itertools.count()
        # Results transcribed while Redis was away, kept until they are stored.
        self._unsaved: dict[str, tuple[Any, dict[str, Any], float, float, bool]] = {}

    @property
    def root(self) -> Path:
        return Path(self.settings.shared_spool_dir)

    async def _open_store(self) -> Any:
        return await asyncio.to_thread(RedisTaskStore, self.cluster, self.root)

    def _extra_loops(self) -> list[tuple[str, Any]]:
        return [("file-cluster-events", self._listen()), ("file-cluster-claims", self._keep_claims())]

    def _redis_down(self, where: str, exc: BaseException) -> None:
        """Log an outage once per place (until it works again there)."""
        if where not in self._warned:
            self._warned.add(where)
            log.warning("file_cluster_redis_unreachable", where=where,
                        error=f"{exc.__class__.__name__}: {exc}")

    def _redis_back(self, where: str) -> None:
        if where in self._warned:
            self._warned.discard(where)
            log.info("file_cluster_redis_back", where=where)

    # ------------------------------------------------------------------ start-up

    async def _recover(self) -> None:
        """Nothing of this instance's own to resume: a task it was running when it died is
        re-claimed from the stream by whoever is free. Abandoned uploads expire; spool folders
        of tasks that no longer exist are removed once they are old."""
        try:
            self._ensure_group()
            self._expire_uploads()
            cutoff = time.time() - self.settings.upload_idle_minutes * 60
            for folder in list(self.store.uploads.iterdir()):
                try:
                    old = folder.stat().st_mtime < cutoff
                except OSError:  # another instance removed it meanwhile
                    continue
                if old:
                    task = self.store.get(folder.name)
                    if task is None or task.state in (TaskState.COMPLETED, TaskState.FAILED):
                        await asyncio.to_thread(shutil.rmtree, folder, True)
        except StoreUnavailable as exc:
            self._redis_down("start", exc)

    def _ensure_group(self) -> None:
        import redis

        try:
            self.cluster.sync().xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreUnavailable(str(exc)) from exc
        except _redis_errors() as exc:
            raise StoreUnavailable(str(exc)) from exc

    # ------------------------------------------------------------------ uploads

    @contextlib.asynccontextmanager
    async def _finishing(self, task_id: str) -> AsyncIterator[None]:
        """The local lock, then a lock in Redis (SET NX with a deadline), so one instance
        verifies and queues an upload whose last chunks reached two instances."""
        async with self._lock(task_id):
            key, token = self.cluster.key("file", "lock", task_id), uuid.uuid4().hex
            r = self.cluster.sync()
            deadline = time.monotonic() + FINISH_LOCK_S
            try:
                while not r.set(key, token, nx=True, ex=int(FINISH_LOCK_S)):
                    if time.monotonic() > deadline:
                        raise m.ProtocolError(m.SERVER_BUSY, "another server is still finishing "
                                              "this upload; try again shortly", task_id=task_id)
                    await asyncio.sleep(0.2)
            except _redis_errors() as exc:
                raise StoreUnavailable(str(exc)) from exc
            try:
                yield
            finally:
                try:
                    self._unlock(keys=[key], args=[token])
                except _redis_errors():
                    pass  # expires by itself

    # ------------------------------------------------------------------ queue

    def _enqueue(self, task_id: str) -> None:
        try:
            self.cluster.sync().xadd(self.stream, {"task_id": task_id})
        except _redis_errors() as exc:
            raise StoreUnavailable(str(exc)) from exc
        self._notify_positions()

    async def _worker(self) -> None:
        consumer = f"{self.cluster.instance_id}/{next(self._worker_numbers)}"
        backoff = 0.5
        while not self._stopping:
            try:
                entry = await self._next_entry(consumer)
            except StoreUnavailable as exc:
                self._redis_down(consumer, exc)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            self._redis_back(consumer)
            backoff = 0.5
            if entry is None:
                continue
            entry_id, task_id = entry
            if task_id:
                self._claims[task_id] = (entry_id, consumer)
                try:
                    await self._run_claimed(task_id)
                except (asyncio.CancelledError, ExecutorClosed):
                    self._give_back(entry_id, task_id)
                    raise
                except StoreUnavailable as exc:
                    self._redis_down(consumer, exc)
                    if not await self._save_later(task_id):
                        # Left pending: re-claimed (by any instance) once Redis is back.
                        self._claims.pop(task_id, None)
                        continue
                except Exception:  # noqa: BLE001 - the worker must live on; retried after the claim timeout
                    log.exception("file_worker_error", task_id=task_id)
                    continue
                finally:
                    self._claims.pop(task_id, None)
            await self._ack(entry_id)

    async def _next_entry(self, consumer: str) -> tuple[str, str] | None:
        """A stream entry whose owner stopped confirming it, else the next new one."""
        import redis

        r = self.cluster.aio()
        idle_ms = int(self.settings.claim_timeout_s * 1000)
        try:
            try:
                found = await r.xautoclaim(self.stream, GROUP, consumer, idle_ms, "0-0", count=1)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await asyncio.to_thread(self._ensure_group)
                return None
            claimed = found[1] if len(found) > 1 else []
            if claimed:
                entry_id, data = claimed[0]
                log.warning("file_task_reclaimed", entry=_text(entry_id),
                            task_id=_text((data or {}).get(b"task_id", b"")))
            else:
                reply = await r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=BLOCK_MS)
                if not reply:
                    return None
                entry_id, data = reply[0][1][0]
        except _redis_errors() as exc:
            raise StoreUnavailable(str(exc)) from exc
        return _text(entry_id), _text((data or {}).get(b"task_id", b""))

    async def _ack(self, entry_id: str) -> None:
        for attempt in range(3):
            try:
                pipe = self.cluster.aio().pipeline()
                pipe.xack(self.stream, GROUP, entry_id)
                pipe.xdel(self.stream, entry_id)
                await pipe.execute()
                return
            except _redis_errors():
                await asyncio.sleep(0.5 * (attempt + 1))
        # Still pending: whoever re-claims it finds the task finished and acknowledges it.

    def _give_back(self, entry_id: str, task_id: str) -> None:
        """Stopping while running a task: put it back on the queue now (not after the claim
        timeout). If Redis is away, it stays pending and is re-claimed later."""
        try:
            pipe = self.cluster.sync().pipeline()
            pipe.xadd(self.stream, {"task_id": task_id})
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            pipe.execute()
        except _redis_errors():
            return
        log.info("file_task_given_back", task_id=task_id)

    async def _run_claimed(self, task_id: str) -> None:
        task = self.store.get(task_id)
        if task is None or task.state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.UPLOADING):
            return
        if task.state == TaskState.RUNNING:
            # Its instance died (or lost Redis for longer than the claim timeout).
            if task.attempts >= self.settings.max_attempts:
                self._fail(task, m.TRANSCRIPTION_FAILED,
                           f"the server stopped {task.attempts} times while transcribing this file")
                return
            log.warning("file_task_resumed", task_id=task_id, attempts=task.attempts)
            self._transition(task, TaskState.QUEUED, progress=0.0)
        if not await asyncio.to_thread(self.store.audio_path(task).is_file):
            self._fail(task, m.TRANSCRIPTION_FAILED, "the uploaded file was lost (is shared_spool_dir "
                       "the same directory on every instance?)")
            return
        await self._run(task_id)

    def _complete(self, task: Any, result: dict[str, Any], duration: float, elapsed: float, *,
                  measured: bool = True) -> None:
        try:
            super()._complete(task, result, duration, elapsed, measured=measured)
        except StoreUnavailable:
            self._unsaved[task.task_id] = (task, result, duration, elapsed, measured)
            log.warning("file_result_unsaved", task_id=task.task_id,
                        reason="Redis is away: the result is kept here until it can be stored")
            raise

    async def _save_later(self, task_id: str) -> bool:
        """A task transcribed while Redis was away: store its result (once, see
        :meth:`RedisTaskStore.finish`) when Redis is back, keeping the claim meanwhile; False if
        there is none, or the service stops first (then the task is re-claimed and runs again)."""
        held = self._unsaved.get(task_id)
        if held is None:
            return False
        task, result, duration, elapsed, measured = held
        backoff = 0.5
        try:
            while not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)  # soon after Redis is back, before a re-claim
                try:
                    super()._complete(task, result, duration, elapsed, measured=measured)
                except StoreUnavailable:
                    continue
                log.info("file_result_saved", task_id=task_id)
                return True
            return False
        finally:
            self._unsaved.pop(task_id, None)

    async def _keep_claims(self) -> None:
        """Confirm this instance's running tasks, and announce its workers (queue estimates)."""
        interval = max(0.3, self.settings.claim_timeout_s / 3)
        while True:
            try:
                await asyncio.to_thread(self._keep_once, interval, list(self._claims.items()))
                self._redis_back("claims")
            except _redis_errors() as exc:
                self._redis_down("claims", exc)
            await asyncio.sleep(interval)

    def _keep_once(self, interval: float, claims: list[tuple[str, tuple[str, str]]]) -> None:
        r = self.cluster.sync()
        for task_id, (entry_id, consumer) in claims:
            if not self._keep(keys=[self.stream], args=[GROUP, consumer, entry_id]):
                log.warning("file_task_claim_lost", task_id=task_id)
        now = time.time()
        r.hset(self.workers_key, self.cluster.instance_id,
               json.dumps({"concurrency": self.settings.concurrency, "until": now + 3 * interval + 5}))
        # Instances gone for an hour (an instance_id of hostname:pid is new on every start).
        for name, raw in r.hgetall(self.workers_key).items():
            if json.loads(raw).get("until", 0) < now - 3600:
                r.hdel(self.workers_key, name)

    async def stop(self) -> None:
        await super().stop()
        try:  # this instance's workers no longer count in the queue's estimates
            await asyncio.to_thread(self.cluster.sync().hdel, self.workers_key, self.cluster.instance_id)
        except _redis_errors():
            pass

    def _cluster_workers(self) -> int:
        now, total = time.time(), 0
        for raw in self.cluster.sync().hvals(self.workers_key):
            info = json.loads(raw)
            if info.get("until", 0) > now:
                total += int(info.get("concurrency", 0))
        return total

    def queue_info(self, task_id: str) -> tuple[int, float]:
        store = self.store
        ahead = store.queued_ahead(task_id)
        if ahead is None:
            return 0, 0.0
        try:
            workers = self._cluster_workers()
        except _redis_errors() as exc:
            raise StoreUnavailable(str(exc)) from exc
        running = store.running_tasks()
        if len(ahead) < workers - len(running):
            return len(ahead) + 1, 0.0
        audio = sum((t.duration if t.duration is not None else 60.0) * (1 - t.progress / 100)
                    for t in running)
        for task in store._tasks(ahead):
            audio += task.duration if task.duration is not None else task.file_size / 16_000
        seconds = audio * self.rtf / max(1, workers)
        return len(ahead) + 1, max(0.01, round(seconds / 60 + 0.005, 2))

    def progress_message(self, task_id: str) -> dict[str, Any] | None:
        found = super().progress_message(task_id)
        if found is not None:
            return found
        task = self.store.get(task_id)
        if task is None or task.state != TaskState.RUNNING:
            return None
        return m.task_progress(task_id, task.progress, "processing", "正在处理音频...")

    # ------------------------------------------------------------------ events

    def _broadcast(self, event: dict[str, Any]) -> bool:
        try:
            self.cluster.sync().publish(self.channel, json.dumps(event, ensure_ascii=False))
            return True
        except _redis_errors() as exc:
            self._redis_down("publish", exc)
            return False

    def _publish(self, task_id: str, message: dict[str, Any]) -> None:
        if not self._broadcast({"k": "msg", "t": task_id, "m": message}):
            self._deliver(task_id, message)

    def _end(self, task_id: str, elapsed: float) -> None:
        if not self._broadcast({"k": "end", "t": task_id, "e": elapsed}):
            self._deliver_end(task_id, elapsed)

    def _notify_positions(self) -> None:
        if not self._broadcast({"k": "pos"}):
            self._notify_local_positions()

    def _notify_local_positions(self) -> None:
        for task_id in list(self._subscribers):
            position, wait = self.queue_info(task_id)
            if position and self._announced.get(task_id) != position:
                self._announced[task_id] = position
                self._deliver(task_id, m.task_queued(task_id, position, wait))

    async def _listen(self) -> None:
        backoff = 0.5
        errors: tuple[type[BaseException], ...] = (*_redis_errors(), StoreUnavailable)
        closing: tuple[type[BaseException], ...] = (*_redis_errors(), RuntimeError)
        while True:
            pubsub = self.cluster.aio().pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._redis_back("events")
                backoff = 0.5
                self._reconcile()  # what happened while this instance was not listening
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_event(message["data"])
            except errors as exc:
                self._redis_down("events", exc)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            finally:
                try:
                    await pubsub.aclose()
                except closing:
                    pass

    def _on_event(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        kind, task_id = event.get("k"), event.get("t", "")
        try:
            if kind == "msg" and task_id in self._subscribers:
                self._deliver(task_id, event["m"])
            elif kind == "end" and task_id in self._subscribers:
                self._deliver_end(task_id, float(event.get("e") or 0.0))
            elif kind == "pos":
                self._notify_local_positions()
        except StoreUnavailable as exc:
            self._redis_down("events", exc)

    def _reconcile(self) -> None:
        """Bring this instance's watchers up to date from Redis: a finished task gets its end
        (once: watchers are dropped when told), a waiting one its place in the queue, a
        running one whose instance is silent its stored progress."""
        for task_id in list(self._subscribers):
            task = self.store.get(task_id)
            if task is None:
                continue
            if task.state in (TaskState.COMPLETED, TaskState.FAILED):
                self._deliver_end(task_id, 0.0)
            elif task.state == TaskState.QUEUED:
                position, wait = self.queue_info(task_id)
                if position:
                    self._announced[task_id] = position
                    self._deliver(task_id, m.task_queued(task_id, position, wait))
            elif task.state == TaskState.RUNNING and task_id not in self._running:
                self._deliver(task_id, m.task_progress(task_id, task.progress, "processing",
                                                       "正在处理音频..."))

    async def _tick_loop(self) -> None:
        interval = self.settings.queue_update_s
        while True:
            await asyncio.sleep(interval)
            try:
                self._reconcile()
            except StoreUnavailable as exc:
                self._redis_down("ticker", exc)
                continue
            now = time.monotonic()
            for run in list(self._running.values()):
                if now - run.sent_at >= interval:
                    run.sent_at = now
                    self._publish(run.task_id, m.task_progress(
                        run.task_id, run.progress, "processing", run.stage or "正在处理音频..."))


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
