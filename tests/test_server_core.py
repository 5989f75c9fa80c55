"""The server core with a tiny protocol registered directly (no models needed)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from asrhub.config import ConfigError, parse_config
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.server import PortInUse, Server
from asrhub.testing import EchoPlugin, free_port


def make_hub(sections: dict) -> Hub:
    config = parse_config({"server": {"host": "127.0.0.1", "preload": False}, **sections})
    return Hub(config, make_plugin_manager([EchoPlugin()]))


def only_echo(port: int, **extra) -> dict:
    hub = make_hub({})
    protocols = {name: {"enabled": False} for name in hub.protocols if name != "echo"}
    protocols["echo"] = {"port": port, **extra}
    return {"protocols": protocols}


async def test_serves_protocol_health_metrics_and_stops_with_1001():
    port = free_port()
    hub = make_hub(only_echo(port, greeting="hi"))
    server = Server(hub)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert "asrhub_connections" in await resp.text()
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            assert (await ws.receive_json())["greeting"] == "hi"
            await ws.send_str("x")
            assert (await ws.receive_json()) == {"echo": "x"}
            await ws.send_bytes(b"\0" * 32000)
            await ws.send_str("y")
            assert (await ws.receive_json()) == {"echo": "y"}
            stopping = asyncio.create_task(server.stop())
            # Graceful shutdown: the session flushes what it owes the client, then 1001.
            assert (await ws.receive_json()) == {"type": "bye", "audio_s": 1.0}
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
            await stopping
    finally:
        await server.stop()
    assert hub.counters["echo"].connections_total == 1
    assert hub.counters["echo"].connections_open == 0


async def test_port_in_use_names_port_and_protocol():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(make_hub(only_echo(port)))
        with pytest.raises(PortInUse, match=rf"port {port} .*'echo'"):
            await server.start()


async def test_token_required_when_configured():
    port = free_port()
    server = Server(make_hub(only_echo(port, token="s3cret")))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            assert err.value.status == 401
            async with http.get(f"http://127.0.0.1:{port}/?token=s3cret") as resp:
                assert resp.status == 200
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws",
                                       headers={"Authorization": "Bearer s3cret"})
            assert (await ws.receive_json())["type"] == "hello"
            await ws.close()
    finally:
        await server.stop()


def test_plugin_section_validated_by_its_settings_class():
    with pytest.raises(ConfigError, match="greetin"):
        make_hub({"protocols": {"echo": {"greetin": "typo"}}})
    with pytest.raises(ConfigError, match="greeting: expected a string"):
        make_hub({"protocols": {"echo": {"greeting": 3}}})
    with pytest.raises(ConfigError, match=r"\[protocols.nope\]"):
        make_hub({"protocols": {"nope": {}}})


async def test_event_loop_stays_responsive_while_inference_runs():
    """A long blocking call in the executor does not stall the loop."""
    import time

    hub = make_hub(only_echo(free_port()))
    server = Server(hub)
    await server.start()
    try:
        lags = []

        async def probe():
            for _ in range(40):
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)

        await asyncio.gather(hub.executor.run(time.sleep, 0.5), probe())
        assert max(lags) < 0.1
    finally:
        await server.stop()
