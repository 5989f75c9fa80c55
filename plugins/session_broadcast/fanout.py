"""A session's results across instances (``[cluster] redis_url``): Redis pub/sub.

Without ``[cluster] redis_url`` none of this runs: one instance fans out in process.

- **Owner** (the instance that holds the sender): takes the session's sender lock
  (``<prefix>broadcast:sender:<session id>``, ``SET NX`` with an expiry refreshed while the
  sender lives), so a second sender on any instance is refused as on one instance; publishes
  each result, in order, on the session's channel (``<prefix>broadcast:results:<session id>``),
  then the session's end, then releases the lock. Publishing goes through one bounded queue
  drained by one task: the session never waits for Redis.
- **Feed** (an instance with receivers of a session whose sender is elsewhere): one subscription
  per (instance, session), shared by that instance's receivers; each message is handed to the
  session, which puts it in each receiver's own bounded outbox (a stuck receiver never slows
  the others).

Every message is JSON ``{"o": owner token, "n": sequence, "t": "start" | "result" | "end",
"m": ...}``: ``m`` is ``{}`` for the start (a sender attached), the result exactly as receivers
get it, or ``{"code": close code, "reason": ...}`` for the end. A feed drops a message it has already seen (a publish retried by the client).

Redis lost: the owner's publish or lock refresh fails, the feed's connection drops (its client
never retries, so a gap is never silent). Either side calls its ``on_lost(why)`` once; the
session tells its clients with the protocol's own error and closes them. A sender's instance
that dies publishes no end: a feed that sees the sender's lock expire without one hands its
session an end (1001) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from asrhub.protocol import CLOSE_GOING_AWAY, dumps

if TYPE_CHECKING:
    import redis.asyncio

    from asrhub.cluster import Cluster

log = structlog.get_logger("asrhub.session_broadcast")

OWNER_TTL_S = 10.0  # the sender lock outlives a dead instance by at most this
REFRESH_S = 2.0  # the lock is refreshed this often (Redis lost: noticed within it)
MAX_PENDING = 256  # results of one session waiting to be published
SUBSCRIBE_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5.0  # at the end: time for the last results to be published
POLL_S = 1.0

_REFRESH = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")


class FanoutUnavailable(RuntimeError):
    """Redis cannot be reached: the session cannot reach other instances."""


def describe(exc: BaseException) -> str:
    return f"Redis unreachable ({exc.__class__.__name__}: {exc})"[:200]


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class Remote:
    """One message from another instance."""

    owner: str
    seq: int
    kind: str  # "start" | "result" | "end"
    body: dict[str, Any]


def decode(data: bytes | str) -> Remote | None:
    """A message off the channel, or None for anything that is not ours."""
    try:
        raw = json.loads(data)
        owner, seq, kind, body = raw["o"], raw["n"], raw["t"], raw["m"]
    except (ValueError, TypeError, KeyError):
        return None
    if not (isinstance(owner, str) and isinstance(seq, int) and kind in ("start", "result", "end")
            and isinstance(body, dict)):
        return None
    return Remote(owner, seq, kind, body)


class Bus:
    """The session-broadcast side of ``hub.cluster`` for one listener of one instance."""

    def __init__(self, cluster: Cluster, *, owner_ttl_s: float = OWNER_TTL_S,
                 refresh_s: float = REFRESH_S) -> None:
        self.cluster = cluster
        # Unique per process (two instances may share an instance_id by mistake).
        self.origin = f"{cluster.instance_id}/{uuid.uuid4().hex[:12]}"
        self.owner_ttl_s = owner_ttl_s
        self.refresh_s = refresh_s

    def channel(self, session_id: str) -> str:
        return self.cluster.key("broadcast", "results", session_id)

    def owner_key(self, session_id: str) -> str:
        return self.cluster.key("broadcast", "sender", session_id)

    async def acquire(self, session_id: str) -> Owner | None:
        """The session's sender lock, or None when a sender holds it elsewhere (or here)."""
        client = self.cluster.aio()
        key = self.owner_key(session_id)
        token = f"{self.origin}/{uuid.uuid4().hex[:8]}"
        try:
            if not await client.set(key, token, nx=True, px=int(self.owner_ttl_s * 1000)):
                # A retried SET whose first reply was lost finds its own token.
                if await client.get(key) != token.encode():
                    return None
        except _redis_errors() as exc:
            raise FanoutUnavailable(describe(exc)) from None
        return Owner(self, session_id, token)

    async def subscribe(self, session_id: str, on_message: Callable[[Remote], None],
                        on_lost: Callable[[str], None]) -> Feed:
        feed = Feed(self, session_id, on_message, on_lost)
        await feed.start()
        return feed


class Owner:
    """The sender's instance: the sender lock and the ordered publisher of one session."""

    def __init__(self, bus: Bus, session_id: str, token: str) -> None:
        self.bus = bus
        self.session_id = session_id
        self.token = token
        self.channel = bus.channel(session_id)
        self.key = bus.owner_key(session_id)
        self.failed = ""
        self.published = 0
        self._seq = 0
        self._queue: asyncio.Queue[str] = asyncio.Queue(MAX_PENDING)
        self._on_lost: Callable[[str], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, on_lost: Callable[[str], None]) -> None:
        self._on_lost = on_lost
        self._queue.put_nowait(self._payload("start", {}))  # feeds learn who holds the sender
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publish_loop(), name=f"broadcast-pub-{self.session_id}"),
                       loop.create_task(self._refresh_loop(), name=f"broadcast-lock-{self.session_id}")]

    def _payload(self, kind: str, body: dict[str, Any]) -> str:
        self._seq += 1
        return dumps({"o": self.token, "n": self._seq, "t": kind, "m": body})

    def publish(self, message: dict[str, Any]) -> None:
        """Queue one result for the other instances (never blocks)."""
        if self.failed:
            return
        try:
            self._queue.put_nowait(self._payload("result", message))
        except asyncio.QueueFull:
            self._fail(f"Redis too slow: more than {MAX_PENDING} results waiting to be published")

    async def _publish_loop(self) -> None:
        client = self.bus.cluster.aio()
        while True:
            payload = await self._queue.get()
            try:
                await client.publish(self.channel, payload)
                self.published += 1
            except _redis_errors() as exc:
                self._fail(describe(exc))
                return
            finally:
                self._queue.task_done()

    async def _refresh_loop(self) -> None:
        client = self.bus.cluster.aio()
        ttl_ms = int(self.bus.owner_ttl_s * 1000)
        while True:
            await asyncio.sleep(self.bus.refresh_s)
            try:
                held = await client.eval(_REFRESH, 1, self.key, self.token, ttl_ms)  # type: ignore[misc]
            except _redis_errors() as exc:
                self._fail(describe(exc))
                return
            if not held:
                self._fail("the session's sender lock in Redis was lost")
                return

    def _fail(self, why: str) -> None:
        if self.failed:
            return
        self.failed = why
        log.warning("broadcast_fanout_lost", session_id=self.session_id, error=why)
        if self._on_lost is not None:
            self._on_lost(why)

    async def finish(self, code: int, reason: str) -> None:
        """After the session's last result: the end to every instance, then the lock freed."""
        refresh = self._tasks[1] if len(self._tasks) > 1 else None
        if refresh is not None:
            refresh.cancel()
        client = self.bus.cluster.aio()
        if not self.failed and self._tasks:
            try:
                await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                self._fail("Redis too slow: the last results were not published")
        if not self.failed:
            try:
                await asyncio.wait_for(
                    client.publish(self.channel, self._payload("end", {"code": code, "reason": reason})),
                    DRAIN_TIMEOUT_S)
            except _redis_errors() as exc:
                self.failed = describe(exc)
                log.warning("broadcast_end_not_published", session_id=self.session_id, error=self.failed)
        await self.release()

    async def release(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(*_redis_errors()):  # else it expires by itself
            await asyncio.wait_for(self.bus.cluster.aio().eval(_RELEASE, 1, self.key, self.token),  # type: ignore[arg-type]
                                   DRAIN_TIMEOUT_S)


class Feed:
    """One subscription of one instance to one session's channel."""

    def __init__(self, bus: Bus, session_id: str, on_message: Callable[[Remote], None],
                 on_lost: Callable[[str], None]) -> None:
        self.bus = bus
        self.session_id = session_id
        self.channel = bus.channel(session_id)
        self.received = 0
        self._on_message = on_message
        self._on_lost = on_lost
        self._pubsub: redis.asyncio.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, int] = {}  # owner token -> last sequence number seen
        self._owner = ""  # the sender's lock token, from its last message
        self._ended = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribed (confirmed by Redis) when it returns; FanoutUnavailable otherwise."""
        self._pubsub = self.bus.cluster.aio_subscriber().pubsub()
        try:
            await asyncio.wait_for(self._subscribe(), SUBSCRIBE_TIMEOUT_S)
        except _redis_errors() as exc:
            await self._reset()
            raise FanoutUnavailable(describe(exc)) from None
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._read(), name=f"broadcast-feed-{self.session_id}")
        self._watch = loop.create_task(self._watch_owner(), name=f"broadcast-watch-{self.session_id}")

    async def _subscribe(self) -> None:
        assert self._pubsub is not None
        await self._pubsub.subscribe(self.channel)
        while True:
            message = await self._pubsub.get_message(timeout=POLL_S)
            if message is not None and message["type"] == "subscribe":
                return

    async def _read(self) -> None:
        assert self._pubsub is not None
        try:
            while True:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                         timeout=POLL_S)
                if message is not None and message["type"] == "message":
                    self._deliver(message["data"])
        except asyncio.CancelledError:
            raise
        except _redis_errors() as exc:
            self._on_lost(describe(exc))
        except Exception as exc:  # noqa: BLE001 - never a silent dead feed
            log.exception("broadcast_feed_failed", session_id=self.session_id)
            self._on_lost(f"internal error: {exc.__class__.__name__}")

    def _deliver(self, data: bytes) -> None:
        remote = decode(data)
        if remote is None:
            log.warning("broadcast_foreign_message", session_id=self.session_id)
            return
        if remote.owner.startswith(self.bus.origin + "/"):
            return  # our own: this instance's receivers got it directly
        if remote.seq <= self._last.get(remote.owner, 0):
            return  # seen already (a retried publish)
        if len(self._last) > 64:  # owners come and go; keep the map small
            self._last.clear()
        self._last[remote.owner] = remote.seq
        self._owner, self._ended = remote.owner, remote.kind == "end"
        self.received += 1
        self._on_message(remote)

    async def _watch_owner(self) -> None:
        """A sender's instance that dies (kill -9, power) publishes no end: once its lock has
        expired without one, the session ends here too (1001), as it would for clients of
        that instance."""
        client = self.bus.cluster.aio()
        key = self.bus.owner_key(self.session_id)
        while True:
            await asyncio.sleep(self.bus.owner_ttl_s / 2)
            if not self._owner or self._ended:
                continue
            owner = self._owner
            try:
                held = await client.get(key)
            except _redis_errors():
                continue  # the subscription reports Redis itself
            if held == owner.encode():
                continue
            await asyncio.sleep(2 * POLL_S)  # an end published just before the lock was freed
            if self._owner == owner and not self._ended:
                log.warning("broadcast_sender_instance_gone", session_id=self.session_id)
                self._ended = True
                self._on_message(Remote(owner, 0, "end", {
                    "code": CLOSE_GOING_AWAY, "reason": "session ended: the sender's instance went away"}))

    async def close(self) -> None:
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch = None
        await self._reset()

    async def _reset(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            with contextlib.suppress(*_redis_errors()):
                await asyncio.wait_for(pubsub.aclose(), 2.0)
