"""Transport glue shared by every WebSocket protocol: tracking, log context, bounded outbox,
one summary line per closed connection. Protocol state machines never touch sockets; their
handlers use a :class:`Connection` to talk to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import WSCloseCode, web

from asrhub.appkeys import HUB_KEY
from asrhub.hub import Hub, ProtocolCounters

log = structlog.get_logger("asrhub.connection")
_conn_ids = itertools.count(1)

# Every open WebSocket of the process, closed with 1001 on shutdown.
OPEN_SOCKETS_KEY: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("asrhub_open_sockets")


class OutboxFull(RuntimeError):
    pass


def close_reason_bytes(reason: str, limit: int = 123) -> bytes:
    """A WebSocket close reason fits in 123 bytes; cut between characters, never inside one."""
    data = reason.encode()
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode()


class Connection:
    """One client connection: a prepared WebSocketResponse plus a bounded outbound queue.

    ``send_json`` never blocks the caller on a slow client: messages go to a queue of at most
    ``max_outbox`` items drained by a writer task; a client that falls that far behind is closed
    with 1008 and a reason (the server never grows without bound).
    """

    def __init__(self, ws: web.WebSocketResponse, hub: Hub, protocol: str, conn_id: str,
                 peer: str, max_outbox: int = 256) -> None:
        self.ws = ws
        self.hub = hub
        self.protocol = protocol
        self.conn_id = conn_id
        self.peer = peer
        self.opened = time.monotonic()
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self.close_reason = "client closed"
        self.summary_extra: dict[str, Any] = {}
        self._outbox: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(max_outbox)
        self._writer = asyncio.get_running_loop().create_task(self._drain(), name=f"outbox-{conn_id}")
        self._overflowed = False

    @property
    def closed(self) -> bool:
        return self.ws.closed or self._overflowed

    def send_json(self, message: dict[str, Any]) -> None:
        self._put(("text", json.dumps(message, ensure_ascii=False)))

    def send_text(self, text: str) -> None:
        self._put(("text", text))

    def _put(self, item: tuple[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self._overflowed = True
            self.close_reason = "client too slow: outbound queue full"
            log.warning("outbox_full", protocol=self.protocol, conn_id=self.conn_id)
            asyncio.get_running_loop().create_task(
                self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"client too slow: outbound queue full"))

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far has been written."""
        deadline = time.monotonic() + timeout
        while not self._outbox.empty() and not self.ws.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _drain(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            kind, payload = item
            try:
                await self.ws.send_str(payload)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int = WSCloseCode.OK, reason: str = "") -> None:
        await self.flush(2.0)
        if reason:
            self.close_reason = reason
        if not self.ws.closed:
            await self.ws.close(code=code, message=close_reason_bytes(reason))

    async def _stop_writer(self) -> None:
        await self.flush(2.0)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    def summary(self) -> dict[str, Any]:
        duration = time.monotonic() - self.opened
        rtf = self.processing_seconds / self.audio_seconds if self.audio_seconds else None
        return {"protocol": self.protocol, "conn_id": self.conn_id, "peer": self.peer,
                "duration_s": round(duration, 3), "audio_s": round(self.audio_seconds, 3),
                "processing_s": round(self.processing_seconds, 3),
                "rtf": round(rtf, 4) if rtf is not None else None,
                "close_reason": self.close_reason, **self.summary_extra}


@contextlib.asynccontextmanager
async def websocket_connection(
    request: web.Request,
    protocol: str,
    *,
    max_msg_size: int = 4 * 1024 * 1024,
    heartbeat: float | None = 30.0,
    max_outbox: int = 256,
    max_connections: int = 0,
) -> AsyncIterator[Connection]:
    """Prepare the WebSocket, bind log context, track it, and log one summary line at the end.

    If ``max_connections`` is reached the socket is still accepted (so the client can be told
    why) and ``conn.over_limit`` is True; the handler sends its protocol's error and closes.
    """
    hub = request.app[HUB_KEY]
    ws = web.WebSocketResponse(max_msg_size=max_msg_size, heartbeat=heartbeat)
    await ws.prepare(request)
    conn_id = f"{protocol}-{next(_conn_ids)}"
    peer = request.remote or "?"
    counters = hub.counters.setdefault(protocol, ProtocolCounters())
    over_limit = bool(max_connections) and counters.connections_open >= max_connections
    sockets = request.app.get(OPEN_SOCKETS_KEY)
    if sockets is not None:
        sockets.add(ws)
    counters.connections_total += 1
    counters.connections_open += 1
    if hub.metrics is not None:
        hub.metrics.connections.labels(protocol=protocol).inc()
        hub.metrics.connections_open.labels(protocol=protocol).inc()
    conn = Connection(ws, hub, protocol, conn_id, peer, max_outbox=max_outbox)
    conn.over_limit = over_limit  # type: ignore[attr-defined]
    with structlog.contextvars.bound_contextvars(protocol=protocol, conn_id=conn_id, peer=peer):
        log.debug("connection_open")
        try:
            yield conn
        except asyncio.CancelledError:
            conn.close_reason = "server shutdown"
            raise
        except Exception as exc:
            conn.close_reason = f"server error: {exc.__class__.__name__}"
            log.exception("connection_failed")
            raise
        finally:
            counters.connections_open -= 1
            if hub.metrics is not None:
                hub.metrics.connections_open.labels(protocol=protocol).dec()
                hub.metrics.audio_seconds.labels(protocol=protocol).inc(conn.audio_seconds)
                if conn.audio_seconds:
                    hub.metrics.rtf.labels(protocol=protocol).observe(
                        conn.processing_seconds / conn.audio_seconds)
            if ws.close_code is not None and conn.close_reason == "client closed":
                conn.close_reason = f"closed ({ws.close_code})"
            await conn._stop_writer()
            if not ws.closed:
                await ws.close()
            hub.session_closed(conn.summary())
