"""The streaming STT protocol on a real server (loopback) with the shared fake engines: what
the protocol kit does for it (limits, metrics, graceful shutdown) and the stop grace over a
real socket. Recognition itself is tested with Whisper in test_stt_e2e.py."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
import stt_helpers as h

from asrhub.hookspecs import hookimpl
from asrhub.testing import make_hub, running_server
from asrhub_plugins.streaming_stt import messages as m

PROTOCOL = "streaming_stt"


def fake_hub(**settings):
    return make_hub({"protocols": {PROTOCOL: settings}}, only=[PROTOCOL], fake_engines=True)


def url(server) -> str:
    return f"http://127.0.0.1:{server.ports[PROTOCOL]}/"


async def receive_until(ws, kind: str, timeout: float = 10.0) -> list[dict]:
    got: list[dict] = []
    while not got or got[-1]["type"] != kind:
        got.append(await asyncio.wait_for(ws.receive_json(), timeout))
    return got


def pcm(seconds: float) -> bytes:
    return (np.sin(np.arange(int(seconds * 16000)) / 7) * 9000).astype("<i2").tobytes()


async def test_a_message_over_the_limit_is_an_error_and_the_connection_stays() -> None:
    async with running_server(fake_hub(max_message_bytes=4096)) as srv, \
            aiohttp.ClientSession() as http, http.ws_connect(url(srv)) as ws:
        assert (await ws.receive_json()) == m.connected()
        await ws.send_bytes(pcm(0.2))  # 6400 bytes
        reply = await ws.receive_json()
        assert reply["code"] == m.MESSAGE_TOO_LARGE and "4096" in reply["message"]
        await ws.send_str('{"command": "start", "language": NaN}')
        assert (await ws.receive_json())["code"] == m.INVALID_JSON
        await ws.send_str('{"command": "start"}')
        assert (await ws.receive_json()) == m.session_started()
        await ws.send_bytes(pcm(0.1))
        await ws.send_str('{"command": "stop"}')
        assert [x["type"] for x in await receive_until(ws, "session_ended")][-2:] == \
            ["final", "session_ended"]
        errors = srv.hub.counters[PROTOCOL].errors
        assert errors == {m.MESSAGE_TOO_LARGE: 1, m.INVALID_JSON: 1}


class SummaryRecorder:
    def __init__(self) -> None:
        self.summaries: list[dict] = []

    @hookimpl
    def asrhub_session_closed(self, hub, summary: dict) -> None:
        self.summaries.append(summary)


async def test_recognition_sessions_are_a_summary_field_not_closed_sessions() -> None:
    recorder = SummaryRecorder()
    summaries = recorder.summaries
    hub = make_hub(only=[PROTOCOL], fake_engines=True, extra_plugins=[recorder])
    async with running_server(hub) as srv:
        async with aiohttp.ClientSession() as http, http.ws_connect(url(srv)) as ws:
            await ws.receive_json()
            for _ in range(2):  # two recognition sessions on one connection
                await ws.send_str('{"command": "start"}')
                await ws.send_bytes(pcm(1.0))
                await ws.send_str('{"command": "stop"}')
                await receive_until(ws, "session_ended")
        for _ in range(200):
            if summaries:
                break
            await asyncio.sleep(0.01)
        metrics = hub.metrics.render().decode()
    assert 'asrhub_sessions_total{protocol="streaming_stt"} 1.0' in metrics
    assert summaries[0]["recognition_sessions"] == 2 and summaries[0]["format"] == "pcm"
    assert summaries[0]["audio_s"] == pytest.approx(2.0)


async def test_shutdown_sends_final_and_session_ended_then_1001() -> None:
    server = running_server(fake_hub())
    srv = await server.__aenter__()
    http = aiohttp.ClientSession()
    stopped = False
    try:
        ws = await http.ws_connect(url(srv))
        await ws.receive_json()
        await ws.send_str('{"command": "start"}')
        await ws.send_bytes(pcm(1.5))
        assert (await ws.receive_json()) == m.session_started()
        await receive_until(ws, "partial")

        async def read_to_close() -> list:
            got = []
            async for msg in ws:  # answers the server's close frame
                got.append(json.loads(msg.data))
            return got

        reader = asyncio.create_task(read_to_close())
        await server.__aexit__(None, None, None)
        stopped = True
        got = await asyncio.wait_for(reader, 10)
        assert [x["type"] for x in got] == ["final", "session_ended"]
        assert got[0] == m.final("w1 w2 w3") and ws.close_code == 1001
    finally:
        if not stopped:
            await server.__aexit__(None, None, None)
        await http.close()


async def test_late_webm_chunk_after_stop_over_a_real_socket() -> None:
    """The seed's JS client, as it reaches the server: webm chunks, stop, then the recorder's
    last chunk. No error; the final counts every chunk."""
    chunks = h.container_chunks((np.sin(np.arange(2 * 16000) / 7) * 0.3).astype(np.float32), "webm")
    async with running_server(fake_hub()) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(url(srv)) as ws:
        await ws.receive_json()
        await ws.send_str(json.dumps({"command": "start"}))
        for _, data in chunks[:-1]:
            await ws.send_bytes(data)
        await ws.send_str(json.dumps({"command": "stop"}))
        await ws.send_bytes(chunks[-1][1])
        got = await receive_until(ws, "session_ended")
    assert "error" not in [x["type"] for x in got], got
    assert got[-2]["type"] == "final" and got[-2]["text"].startswith("w1 w2 w3")
    assert srv.hub.counters[PROTOCOL].errors == {}
