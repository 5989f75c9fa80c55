"""The protocol kit's core path (asrhub/protocol.py) on a real server over loopback: limits,
errors, the bounded outbox, origin and token checks, reload, graceful shutdown. The echo
protocol of asrhub.testing has no models, so these run in a second."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import aiohttp
import pytest

from asrhub.config import parse_config
from asrhub.logsetup import ClientErrorFilter
from asrhub.protocol import ProtocolError, dumps, loads
from asrhub.server import Server
from asrhub.testing import EchoPlugin, free_port, make_hub


def echo_hub(**echo: object):
    port = free_port()
    section = {"enabled": True, "port": port, **echo}
    hub = make_hub({"protocols": {"echo": section}}, only=["echo"], extra_plugins=[EchoPlugin()])
    return hub, port


async def started(hub) -> Server:
    server = Server(hub)
    await server.start()
    return server


# ----------------------------------------------------------------------------- JSON edge


@pytest.mark.parametrize("text", [
    '{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', "1" * 5000, "[" * 100_000,
    '{"a": ' * 50 + "1" + "}" * 50, b"\xff\xfe", "{", "",
])
def test_loads_is_total(text):
    with pytest.raises(ValueError):
        loads(text)


def test_loads_accepts_ordinary_json():
    assert loads('{"a": [1, 2.5, "x", null, true], "b": {"c": -3}}') == {
        "a": [1, 2.5, "x", None, True], "b": {"c": -3}}


def test_dumps_escapes_lone_surrogates_instead_of_failing():
    text = dumps({"echo": "\ud800", "ok": "语音"})
    text.encode("utf-8")  # always encodable
    assert json.loads(text) == {"echo": "\ud800", "ok": "语音"}
    assert "语音" in dumps({"ok": "语音"})  # UTF-8 kept when it can be
    with pytest.raises(ValueError):
        dumps({"x": math.nan})


# ----------------------------------------------------------------------------- transport


async def test_errors_keep_the_connection_and_internal_failures_close_1011():
    hub, port = echo_hub(max_message_bytes=2048)
    server = await started(hub)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            assert (await ws.receive_json())["type"] == "hello"
            await ws.send_str("x" * 5000)  # over max_message_bytes: the protocol's own error
            err = await ws.receive_json()
            assert err["type"] == "error" and err["code"] == "too_big"
            await ws.send_str("bad")  # a ProtocolError from the session: reported, kept
            assert (await ws.receive_json())["code"] == "bad_message"
            await ws.send_str("still here")
            assert (await ws.receive_json()) == {"echo": "still here"}
            await ws.send_str("fail")  # an unexpected exception inside the hub
            err = await ws.receive_json()
            assert err["code"] == "internal" and "boom" not in err["message"]
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1011
        assert hub.counters["echo"].errors == {"too_big": 1, "bad_message": 1, "internal": 1}
    finally:
        await server.stop()


async def settle(server: Server, open_connections: int) -> None:
    """Wait until the server has let go of closed connections."""
    for _ in range(200):
        if len(server.transport.live["echo"]) <= open_connections:
            return
        await asyncio.sleep(0.02)


async def test_connection_limits_per_listener_and_per_peer():
    hub, port = echo_hub(max_connections=4, max_connections_per_peer=2)
    server = await started(hub)
    url = f"http://127.0.0.1:{port}/ws"
    try:
        # A client on 127.0.0.2 is one peer; 127.0.0.1 (a local reverse proxy) is exempt.
        remote = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=remote) as other, aiohttp.ClientSession() as local:
            first = await other.ws_connect(url)
            second = await other.ws_connect(url)
            for ws in (first, second):
                assert (await ws.receive_json())["type"] == "hello"
            third = await other.ws_connect(url)  # over the per-peer limit
            err = await third.receive_json()
            assert err["code"] == "too_many_connections" and "127.0.0.2" in err["message"]
            msg = await third.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013
            await settle(server, 2)
            # the others did not notice
            await first.send_str("a")
            assert (await first.receive_json()) == {"echo": "a"}
            proxied = [await local.ws_connect(url) for _ in range(2)]  # not per-peer limited
            for ws in proxied:
                assert (await ws.receive_json())["type"] == "hello"
            over = await local.ws_connect(url)  # but the listener's limit (4) holds
            assert (await over.receive_json())["code"] == "too_many_connections"
            assert (await over.receive()).type == aiohttp.WSMsgType.CLOSE
            await second.close()
            await settle(server, 3)
            again = await other.ws_connect(url)
            assert (await again.receive_json())["type"] == "hello"
    finally:
        await server.stop()


async def test_non_websocket_get_is_told_how_to_connect():
    hub, port = echo_hub()
    server = await started(hub)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/ws") as resp:
                assert resp.status == 426 and (await resp.json())["protocol"] == "echo"
    finally:
        await server.stop()


async def test_a_slow_client_is_closed_not_buffered_without_bound():
    hub, port = echo_hub(max_outbox=4)
    server = await started(hub)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A raw WebSocket handshake, then many messages, never reading a reply.
        writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        payload = b"y" * 1000
        frame = bytes([0x81, 0xFE]) + len(payload).to_bytes(2, "big")
        mask = b"\0\0\0\0"
        for _ in range(3000):
            writer.write(frame[:1] + bytes([0x80 | 126]) + frame[2:] + mask + payload)
        with pytest.raises((ConnectionError, asyncio.TimeoutError, AssertionError)):
            await asyncio.wait_for(writer.drain(), 5.0)
            raise AssertionError("not closed yet")
        writer.close()
        for _ in range(100):
            if hub.counters["echo"].connections_open == 0:
                break
            await asyncio.sleep(0.05)
        assert hub.counters["echo"].connections_open == 0
    finally:
        await server.stop()


# ----------------------------------------------------------------------------- guard


async def test_cross_origin_websocket_refused_by_default_same_host_allowed():
    hub, port = echo_hub()
    server = await started(hub)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/ws"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, origin="http://evil.example")
            assert refused.value.status == 403
            ws = await http.ws_connect(url, origin="http://127.0.0.1:9201")  # the hub's page
            assert (await ws.receive_json())["type"] == "hello"
            await ws.close()
            ws = await http.ws_connect(url)  # no Origin: not a browser
            assert (await ws.receive_json())["type"] == "hello"
            await ws.close()
    finally:
        await server.stop()


async def test_listed_origins_only():
    hub, port = echo_hub(allowed_origins=["https://app.example"])
    server = await started(hub)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/ws"
            ws = await http.ws_connect(url, origin="https://app.example")
            assert (await ws.receive_json())["type"] == "hello"
            await ws.close()
            for origin in ("http://127.0.0.1:9201", "https://evil.example"):
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await http.ws_connect(url, origin=origin)
    finally:
        await server.stop()


async def raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(200), 5.0)
    writer.close()
    return data


async def test_token_header_edge_cases():
    hub, port = echo_hub(token="s3cret")
    server = await started(hub)
    try:
        # non-ASCII bytes in the header: a plain 401, never a 500
        answer = await raw_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                         b"Authorization: Bearer \xff\xfe\xfd\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), answer
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            # an empty X-Asrhub-Token does not hide a valid ?token=
            async with http.get(f"{base}/health?token=s3cret", headers={"X-Asrhub-Token": ""}) as r:
                assert r.status == 200
            async with http.get(f"{base}/health", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            async with http.get(f"{base}/health", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
    finally:
        await server.stop()


async def test_slow_headers_are_cut_off():
    port = free_port()
    hub = make_hub({"server": {"header_timeout_s": 0.5},
                    "protocols": {"echo": {"enabled": True, "port": port}}},
                   only=["echo"], extra_plugins=[EchoPlugin()])
    server = await started(hub)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed by the server
        writer.close()
    finally:
        await server.stop()


def test_malformed_requests_log_one_info_line_not_a_traceback():
    from aiohttp.http_exceptions import LineTooLong

    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request", (), None)
    try:
        raise LineTooLong("x" * 10, "8190")
    except LineTooLong:
        import sys

        record.exc_info = sys.exc_info()
    assert ClientErrorFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    server_side = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "boom", (),
                                    (RuntimeError, RuntimeError("x"), None))
    ClientErrorFilter().filter(server_side)
    assert server_side.levelno == logging.ERROR


# ----------------------------------------------------------------------------- reload


async def test_reload_applies_token_and_limits_without_dropping_connections():
    hub, port = echo_hub(max_message_bytes=2048)
    server = await started(hub)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/ws"
            ws = await http.ws_connect(url)
            assert (await ws.receive_json())["type"] == "hello"
            protocols = {k: dict(v) for k, v in hub.config.protocol_sections.items()}
            protocols["echo"].update(token="new", max_message_bytes=4096, greeting="changed")
            raw = {"server": {"host": "127.0.0.1", "preload": False,
                              "state_dir": hub.config.server.state_dir}, "protocols": protocols}
            needs_restart = server.reload(parse_config(raw))
            assert needs_restart == ["[protocols.echo] greeting"]
            assert server.contexts["echo"].limits.max_message_bytes == 4096
            assert server.contexts["echo"].listener.token == ("new",)
            await ws.send_str("kept")  # the open connection is untouched
            assert (await ws.receive_json()) == {"echo": "kept"}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
            assert refused.value.status == 401
            ws2 = await http.ws_connect(url + "?token=new")
            assert (await ws2.receive_json())["greeting"] == "hello"  # restart-only: unchanged
            await ws2.close()
            await ws.close()
    finally:
        await server.stop()


async def test_reload_refuses_an_invalid_config_and_keeps_running():
    hub, port = echo_hub()
    server = await started(hub)
    try:
        with pytest.raises(Exception, match="unknown key"):
            server.reload(parse_config({"protocols": {"echo": {"no_such_key": 1}}}))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as r:
                assert r.status == 200
    finally:
        await server.stop()


def test_protocol_error_defaults():
    err = ProtocolError(7, "nope")
    assert (err.code, err.fatal, err.close_code, err.status) == (7, False, 1008, 400)
