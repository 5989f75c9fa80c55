"""Several asrhub instances sharing state through Redis (``[cluster] redis_url``).

A single box needs none of this: with ``redis_url`` unset the hub has no :class:`Cluster` and
every feature keeps its embedded store. With it set, plugins reach Redis through
``hub.cluster`` (one connection pool per process, sync for engine threads and async for the
event loop), name their keys with :meth:`Cluster.key`, and report failures as clear errors of
their own protocol; ``/health`` shows whether Redis is reachable.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from asrhub.config import ClusterConfig

log = structlog.get_logger("asrhub.cluster")


class ClusterUnavailable(RuntimeError):
    """Redis cannot be reached: the feature that needs it is unavailable for now."""


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.instance_id = config.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.reachable: bool | None = None  # None: not checked yet
        self.last_error = ""
        self.checked_at = 0.0
        self._sync: redis.Redis | None = None
        self._async: redis.asyncio.Redis | None = None
        self._subscriber: redis.asyncio.Redis | None = None
        self._watch: asyncio.Task | None = None

    def key(self, *parts: str) -> str:
        return self.config.key_prefix + ":".join(parts)

    def sync(self) -> redis.Redis:
        """A client for worker threads and the CLI (blocking calls, short timeouts)."""
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.config.redis_url, socket_timeout=3,
                                              socket_connect_timeout=2, health_check_interval=10)
        return self._sync

    def aio(self) -> redis.asyncio.Redis:
        """A client for the event loop."""
        if self._async is None:
            import redis.asyncio

            self._async = redis.asyncio.Redis.from_url(self.config.redis_url, socket_timeout=3,
                                                       socket_connect_timeout=2,
                                                       health_check_interval=10)
        return self._async

    def aio_subscriber(self) -> redis.asyncio.Redis:
        """A client for pub/sub subscriptions on the event loop. It never retries: a dropped
        connection (messages possibly missed) is an error its subscriber sees, not a silent
        reconnect and re-subscribe."""
        if self._subscriber is None:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._subscriber = redis.asyncio.Redis.from_url(
                self.config.redis_url, socket_timeout=3, socket_connect_timeout=2,
                health_check_interval=10, retry=Retry(NoBackoff(), 0))
        return self._subscriber

    def status(self) -> dict[str, Any]:
        state = {None: "unknown", True: "ok", False: "unreachable"}[self.reachable]
        return {"redis": state, "instance": self.instance_id,
                **({"error": self.last_error} if self.reachable is False else {})}

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop(), name="redis-watch")

    async def _watch_loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.config.health_interval_s)

    async def check(self) -> bool:
        import redis

        try:
            await self.aio().ping()
            ok, error = True, ""
        except (redis.RedisError, OSError) as exc:
            ok, error = False, f"{exc.__class__.__name__}: {exc}"
        if ok != self.reachable:
            (log.info if ok else log.warning)("redis_reachable" if ok else "redis_unreachable",
                                              error=error or None)
        self.reachable, self.last_error, self.checked_at = ok, error, time.time()
        return ok

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        if self._async is not None:
            await self._async.aclose()
        if self._subscriber is not None:
            await self._subscriber.aclose()
        if self._sync is not None:
            self._sync.close()
