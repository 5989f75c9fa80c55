"""The protocol kit's raw TCP path with a tiny line protocol registered directly (no models):
framing errors, limits, session errors, summaries and graceful shutdown, over real sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from asrhub.config import parse_config
from asrhub.hookspecs import hookimpl
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.protocol import (
    Channel,
    CloseInfo,
    ErrorCodes,
    ListenerSettings,
    ProtocolContext,
    ProtocolError,
    Session,
    TcpRoute,
)
from asrhub.server import Server
from asrhub.specs import ProtocolSpec
from asrhub.testing import free_port

CODES = ErrorCodes(bad_message="bad_line", too_big="too_big", busy="busy", internal="internal",
                   too_many_connections="too_many")
closed_sessions: list[CloseInfo] = []


@dataclass(frozen=True)
class LineSettings(ListenerSettings):
    max_message_bytes: int = 1024
    max_connections: int = 3


class LineSession(Session):
    """Echoes each line; ``fail`` breaks inside the hub, ``bad`` is a (non-fatal) client error,
    ``audio N`` counts N seconds of audio; on shutdown it says goodbye first."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def on_open(self) -> None:
        self.channel.send_text("hello\n")

    async def on_message(self, message: str) -> None:
        if message == "fail":
            raise RuntimeError("boom")
        if message == "bad":
            raise ProtocolError("bad_line", "you asked for it")
        if message.startswith("audio "):
            self.audio_seconds += float(message.split()[1])
        self.channel.send_text(f"echo {message}\n")

    async def on_close(self, info: CloseInfo) -> None:
        closed_sessions.append(info)
        if info.shutdown:
            self.channel.send_text(f"bye {self.audio_seconds:g}\n")

    def summary(self) -> dict:
        return {"lines": "counted"}


async def read_line(reader: asyncio.StreamReader, max_message_bytes: int) -> str | None:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    except asyncio.LimitOverrunError:
        raise ProtocolError("too_big", "line over the stream limit") from None
    if len(line) > max_message_bytes:
        raise ProtocolError("too_big", f"line of {len(line)} bytes")
    text = line.decode("utf-8").rstrip("\n")  # UnicodeDecodeError: a framing error too
    return text


def _setup(ctx: ProtocolContext) -> None:
    ctx.serve_tcp(TcpRoute(read_message=read_line,
                           open_session=lambda channel, peer: LineSession(channel),
                           error_message=lambda err: f"error {err.code}: {err.message}\n",
                           codes=CODES))


class LinePlugin:
    @hookimpl
    def asrhub_register_protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec("line", 1, "a line protocol for tests", _setup, LineSettings,
                             transport="tcp")]


def make_hub(port: int) -> Hub:
    config = parse_config({"server": {"host": "127.0.0.1", "preload": False},
                           "protocols": {"line": {"port": port}}})
    return Hub(config, make_plugin_manager([LinePlugin()], load_entry_points=False))


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        return client

    async def say(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> str:
        return (await asyncio.wait_for(self.reader.readline(), 10)).decode()

    async def eof(self) -> bool:
        """True when the server closed the connection (after whatever it still sends)."""
        rest = await asyncio.wait_for(self.reader.read(), 10)
        return rest == b""

    def close(self) -> None:
        self.writer.close()


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_lines_errors_limits_and_summaries():
    port = free_port()
    hub = make_hub(port)
    summaries: list[dict] = []
    session_closed = hub.session_closed
    hub.session_closed = lambda summary: (summaries.append(summary), session_closed(summary))  # type: ignore[method-assign]
    server = Server(hub)
    await server.start()
    try:
        a = await Client.connect(port)
        b = await Client.connect(port)
        assert await a.line() == "hello\n" and await b.line() == "hello\n"
        await a.say(b"one\ntwo\n")
        assert [await a.line(), await a.line()] == ["echo one\n", "echo two\n"]
        # A client error keeps the connection.
        await b.say(b"bad\nstill here\n")
        assert await b.line() == "error bad_line: you asked for it\n"
        assert await b.line() == "echo still here\n"
        # A line over max_message_bytes is a framing error: told why, then closed.
        await b.say(b"x" * 2000 + b"\n")
        assert (await b.line()).startswith("error too_big: line of 2001 bytes")
        assert await b.eof()
        # So is one that is not UTF-8 (the reader's ValueError maps to bad_message).
        c = await Client.connect(port)
        assert await c.line() == "hello\n"
        await c.say(b"\xff\xfe\n")
        assert (await c.line()).startswith("error bad_line: bad message")
        assert await c.eof()
        # A failure inside the hub: the protocol's internal error, then closed.
        d = await Client.connect(port)
        assert await d.line() == "hello\n"
        await d.say(b"fail\n")
        assert await d.line() == "error internal: internal error: RuntimeError\n"
        assert await d.eof()
        # The first client never noticed any of it.
        await a.say(b"three\n")
        assert await a.line() == "echo three\n"
        # A client that leaves inside a frame is cleaned up.
        e = await Client.connect(port)
        assert await e.line() == "hello\n"
        await e.say(b"half a li")
        e.close()
        await until(lambda: hub.counters["line"].connections_open == 1)
        # max_connections (3): the fourth gets the protocol's refusal and is closed.
        f, g = await Client.connect(port), await Client.connect(port)
        assert await f.line() == "hello\n" and await g.line() == "hello\n"
        h = await Client.connect(port)
        assert (await h.line()).startswith("error too_many: too many connections (limit 3)")
        assert await h.eof()
        for client in (a, f, g):
            client.close()
        await until(lambda: hub.counters["line"].connections_open == 0)
    finally:
        await server.stop()
    counters = hub.counters["line"]
    assert counters.connections_total == 8
    assert counters.errors == {"bad_line": 2, "too_big": 1, "internal": 1, "too_many": 1}
    assert len(summaries) == 8
    assert all(s["protocol"] == "line" for s in summaries)
    # One summary line per connection; the session's own fields where a session was opened.
    refused = [s for s in summaries if s["close_code"] == 1013]
    assert len(refused) == 1 and "lines" not in refused[0]
    assert all(s["lines"] == "counted" for s in summaries if s not in refused)
    reasons = [s["close_reason"] for s in summaries]
    assert reasons.count("client closed") == 4
    assert "line of 2001 bytes" in reasons
    assert "internal error: RuntimeError" in reasons


async def test_graceful_shutdown_lets_the_session_say_goodbye():
    port = free_port()
    hub = make_hub(port)
    server = Server(hub)
    await server.start()
    closed_sessions.clear()
    try:
        a = await Client.connect(port)
        assert await a.line() == "hello\n"
        await a.say(b"audio 1.5\n")
        assert await a.line() == "echo audio 1.5\n"
        stopping = asyncio.create_task(server.stop())
        # The session flushes what it owes the client, then the connection closes.
        assert await a.line() == "bye 1.5\n"
        assert await a.eof()
        await stopping
    finally:
        await server.stop()
    assert [info.shutdown for info in closed_sessions] == [True]
    assert hub.counters["line"].audio_seconds == 1.5
    assert hub.counters["line"].connections_open == 0
    # New connections are refused once the listener stopped.
    try:
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except OSError:
        pass
    else:
        raise AssertionError("the listener still accepts connections after stop")
