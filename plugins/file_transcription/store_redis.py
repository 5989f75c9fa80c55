"""Durable state shared by the instances of a cluster: tasks, chunks and results in Redis,
uploads in a spool directory every instance can reach (``shared_spool_dir``).

The same interface as :class:`~.store.TaskStore` (the SQLite store of a single box), so the
service and the sessions do not know which one they have. Keys (under ``[cluster]
key_prefix``)::

    file:task:<id>        hash: the TaskRow fields (None = field absent)
    file:chunks:<id>      hash: chunk index -> "size:md5"
    file:result:<key>     hash: task_id, result (JSON), created_at   (key = SHA-256 cache key)
    file:pending          set: tasks uploading or queued (admission, expiry)
    file:running          set: tasks being transcribed
    file:queued           sorted set: queued tasks by queued_at (queue positions)
    file:client:<client>  set: that client's uploading/queued tasks (quota)
    file:unfinished:<scope>|<md5>|<size>   sorted set: unfinished tasks announced with it
    file:md5:<scope>|<md5>|<size>          set: cache keys of completed tasks (the MD5 shortcut)
    file:meta             hash: measured real-time factor, ...

Every index change of a task goes with its state in one MULTI/EXEC; :meth:`finish` is a Lua
script that completes a task only once (a second instance that ran the same task after a
re-claim gets ``False`` and tells nobody). Redis unreachable: every method raises
:class:`StoreUnavailable`, the protocol's ``server_busy`` with a message that says so.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import messages as m
from .store import SpoolFiles, TaskRow, private_dir

if TYPE_CHECKING:
    from asrhub.cluster import Cluster

F = TypeVar("F", bound=Callable[..., Any])
UNAVAILABLE = "the shared task store (Redis) cannot be reached; try again shortly"
FIELD_TYPES = {f.name: f.type for f in fields(TaskRow)}
PENDING_STATES = ("uploading", "queued")

FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'completed' then return 0 end
redis.call('HSET', KEYS[2], 'task_id', ARGV[1], 'result', ARGV[2], 'created_at', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'completed', 'progress', '100', 'duration', ARGV[4],
           'finished_at', ARGV[3], 'updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'error')
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('SREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
if ARGV[5] ~= '' then redis.call('SADD', KEYS[9], ARGV[5]) end
return 1
"""


class StoreUnavailable(m.ProtocolError):
    """Redis cannot be reached: the operation is refused with ``server_busy`` (not fatal)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(m.SERVER_BUSY, UNAVAILABLE)
        self.detail = detail


def guarded(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"{exc.__class__.__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _decode(raw: dict[bytes, bytes]) -> TaskRow:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode()
        if name not in FIELD_TYPES:
            continue
        text = value.decode("utf-8", "surrogateescape")
        kind = str(FIELD_TYPES[name])
        if "bool" in kind:
            values[name] = text == "1"
        elif "int" in kind:
            values[name] = int(text)
        elif "float" in kind:
            values[name] = float(text)
        else:
            values[name] = text
    for name in ("duration", "error", "queued_at", "started_at", "finished_at", "sha256"):
        values.setdefault(name, None)
    values.setdefault("progress", 0.0)
    values.setdefault("attempts", 0)
    return TaskRow(**values)


class RedisTaskStore(SpoolFiles):
    """:class:`~.store.TaskStore`'s interface on Redis + a shared spool directory."""

    def __init__(self, cluster: Cluster, spool: Path) -> None:
        self.cluster = cluster
        self.root = spool
        self.uploads = spool
        private_dir(spool)
        self._finish = cluster.sync().register_script(FINISH)

    def _k(self, *parts: str) -> str:
        return self.cluster.key("file", *parts)

    @property
    def r(self) -> Any:
        return self.cluster.sync()

    def close(self) -> None:
        """The connection pool is the hub's (``hub.cluster``): nothing to close here."""

    # ------------------------------------------------------------------ tasks

    @guarded
    def create_task(self, *, task_id: str, file_name: str, file_size: int, file_hash: str,
                    output_format: str, chunked: bool, chunk_size: int, total_chunks: int,
                    scope: str = "", client: str = "", force_refresh: bool = False) -> TaskRow:
        now = time.time()
        task = TaskRow(task_id=task_id, file_name=file_name, file_size=file_size,
                       file_hash=file_hash, cache_key="", output_format=output_format,
                       chunked=chunked, chunk_size=chunk_size, total_chunks=total_chunks,
                       state="uploading", progress=0.0, duration=None, error=None, attempts=0,
                       created_at=now, updated_at=now, queued_at=None, started_at=None,
                       finished_at=None, sha256=None, scope=scope, client=client,
                       force_refresh=force_refresh)
        mapping = {name: _encode(getattr(task, name)) for name in FIELD_TYPES
                   if getattr(task, name) is not None}
        pipe = self.r.pipeline()
        pipe.hset(self._k("task", task_id), mapping=mapping)
        pipe.sadd(self._k("pending"), task_id)
        pipe.sadd(self._k("client", client), task_id)
        pipe.zadd(self._k("unfinished", self._md5_key(scope, file_hash, file_size)), {task_id: now})
        pipe.execute()
        return task

    @staticmethod
    def _md5_key(scope: str, file_hash: str, file_size: int) -> str:
        return f"{scope}|{file_hash}|{file_size}"

    @guarded
    def get(self, task_id: str) -> TaskRow | None:
        raw = self.r.hgetall(self._k("task", task_id))
        return _decode(raw) if raw else None

    @guarded
    def find_unfinished(self, scope: str, file_hash: str, file_size: int) -> TaskRow | None:
        ids = self.r.zrevrange(self._k("unfinished", self._md5_key(scope, file_hash, file_size)), 0, 4)
        for raw_id in ids:
            task = self.get(raw_id.decode())
            if task is not None and task.state in ("uploading", "queued", "running"):
                return task
        return None

    @guarded
    def shortcut_keys(self, scope: str, file_hash: str, file_size: int) -> set[str]:
        members = self.r.smembers(self._k("md5", self._md5_key(scope, file_hash, file_size)))
        return {x.decode("utf-8", "surrogateescape") for x in members}

    def _tasks(self, ids: Any) -> list[TaskRow]:
        pipe = self.r.pipeline()
        names = [x.decode() if isinstance(x, bytes) else x for x in ids]
        for task_id in names:
            pipe.hgetall(self._k("task", task_id))
        return [_decode(raw) for raw in pipe.execute() if raw]

    @guarded
    def pending_of(self, client: str) -> tuple[int, int]:
        tasks = [t for t in self._tasks(self.r.smembers(self._k("client", client)))
                 if t.state in PENDING_STATES]
        return len(tasks), sum(t.file_size for t in tasks)

    @guarded
    def reserved_bytes(self) -> int:
        uploading = [t for t in self._tasks(self.r.smembers(self._k("pending")))
                     if t.state == "uploading"]
        written = 0
        for task in uploading:
            for value in self.r.hvals(self._k("chunks", task.task_id)):
                written += int(value.split(b":", 1)[0])
        return max(0, sum(t.file_size for t in uploading) - written)

    @guarded
    def count_pending(self) -> int:
        return int(self.r.scard(self._k("pending")))

    @guarded
    def update(self, task_id: str, **values: Any) -> None:
        now = time.time()
        values["updated_at"] = now
        key = self._k("task", task_id)
        if "state" not in values:
            self.r.hset(key, mapping={n: _encode(v) for n, v in values.items() if v is not None})
            absent = [n for n, v in values.items() if v is None]
            if absent:
                self.r.hdel(key, *absent)
            return
        task = self.get(task_id)
        if task is None:
            return
        state = values["state"]
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={n: _encode(v) for n, v in values.items() if v is not None})
        absent = [n for n, v in values.items() if v is None]
        if absent:
            pipe.hdel(key, *absent)
        if state in PENDING_STATES:
            pipe.sadd(self._k("pending"), task_id)
            pipe.sadd(self._k("client", task.client), task_id)
        else:
            pipe.srem(self._k("pending"), task_id)
            pipe.srem(self._k("client", task.client), task_id)
        if state == "queued":
            queued_at = values.get("queued_at") or task.queued_at or now
            pipe.zadd(self._k("queued"), {task_id: queued_at})
        else:
            pipe.zrem(self._k("queued"), task_id)
        if state == "running":
            pipe.sadd(self._k("running"), task_id)
        else:
            pipe.srem(self._k("running"), task_id)
        if state in ("completed", "failed"):
            pipe.zrem(self._k("unfinished", self._md5_key(task.scope, task.file_hash, task.file_size)),
                      task_id)
        pipe.execute()

    @guarded
    def tasks_in(self, *states: str) -> list[TaskRow]:
        ids: set[bytes] = set()
        if set(states) & set(PENDING_STATES):
            ids |= self.r.smembers(self._k("pending"))
        if "running" in states:
            ids |= self.r.smembers(self._k("running"))
        tasks = [t for t in self._tasks(ids) if t.state in states]
        return sorted(tasks, key=lambda t: t.queued_at or t.created_at)

    @guarded
    def stale_uploads(self, older_than: float) -> list[TaskRow]:
        return [t for t in self._tasks(self.r.smembers(self._k("pending")))
                if t.state == "uploading" and t.updated_at < older_than]

    @guarded
    def delete_task(self, task_id: str) -> None:
        task = self.get(task_id)
        pipe = self.r.pipeline()
        pipe.delete(self._k("chunks", task_id), self._k("task", task_id))
        pipe.srem(self._k("pending"), task_id)
        pipe.srem(self._k("running"), task_id)
        pipe.zrem(self._k("queued"), task_id)
        if task is not None:
            pipe.srem(self._k("client", task.client), task_id)
            pipe.zrem(self._k("unfinished", self._md5_key(task.scope, task.file_hash, task.file_size)),
                      task_id)
        pipe.execute()
        self.remove_spool(task_id)

    # ------------------------------------------------------------------ queue view

    @guarded
    def queued_ahead(self, task_id: str) -> list[str] | None:
        """Queued tasks ahead of this one (oldest first); None if it is not queued."""
        rank = self.r.zrank(self._k("queued"), task_id)
        if rank is None:
            return None
        return [x.decode() for x in self.r.zrange(self._k("queued"), 0, rank - 1)] if rank else []

    @guarded
    def running_tasks(self) -> list[TaskRow]:
        return [t for t in self._tasks(self.r.smembers(self._k("running"))) if t.state == "running"]

    # ------------------------------------------------------------------ chunks

    @guarded
    def chunk_md5(self, task_id: str, index: int) -> str | None:
        value = self.r.hget(self._k("chunks", task_id), str(index))
        return value.decode().split(":", 1)[1] if value is not None else None

    @guarded
    def record_chunk(self, task_id: str, index: int, size: int, md5: str) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self._k("chunks", task_id), str(index), f"{size}:{md5}")
        pipe.hset(self._k("task", task_id), "updated_at", _encode(time.time()))
        pipe.execute()

    @guarded
    def received_chunks(self, task_id: str) -> list[int]:
        return sorted(int(x) for x in self.r.hkeys(self._k("chunks", task_id)))

    @guarded
    def forget_chunks(self, task_id: str) -> None:
        self.r.delete(self._k("chunks", task_id))

    # ------------------------------------------------------------------ results

    @guarded
    def get_result(self, cache_key: str) -> tuple[str, dict[str, Any], float] | None:
        if not cache_key:
            return None
        raw = self.r.hgetall(self._k("result", cache_key))
        if not raw:
            return None
        return raw[b"task_id"].decode(), json.loads(raw[b"result"]), float(raw[b"created_at"])

    @guarded
    def finish(self, task_id: str, cache_key: str, result: dict[str, Any], duration: float) -> bool:
        """Store the result and complete the task, atomically; False if it already was (another
        instance finished the same task after re-claiming it): nobody is told twice."""
        task = self.get(task_id)
        if task is None:
            return False
        md5_key = self._md5_key(task.scope, task.file_hash, task.file_size)
        keys = [self._k("task", task_id), self._k("result", cache_key), self._k("chunks", task_id),
                self._k("pending"), self._k("running"), self._k("queued"),
                self._k("client", task.client), self._k("unfinished", md5_key),
                self._k("md5", md5_key)]
        done = self._finish(keys=keys, args=[task_id, json.dumps(result, ensure_ascii=False),
                                             _encode(time.time()), _encode(duration),
                                             cache_key if task.sha256 else ""])
        return bool(done)

    # ------------------------------------------------------------------ meta

    @guarded
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        value = self.r.hget(self._k("meta"), key)
        return value.decode() if value is not None else default

    @guarded
    def set_meta(self, key: str, value: str) -> None:
        self.r.hset(self._k("meta"), key, value)

