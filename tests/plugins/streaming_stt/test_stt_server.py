"""The streaming STT protocol on a real server (loopback) with the shared fake engines: what
the protocol kit does for it (limits, metrics, graceful shutdown) and the stop grace over a
real socket. Recognition itself is tested with Whisper in test_stt_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil

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


# The seed's JavaScript class runs verbatim in Node; only what a browser gives it is stood in
# for: `document`, the microphone, and a MediaRecorder that behaves as the MediaStream
# Recording spec says. It records live (chunk i of a real webm/opus stream exists once
# i x 100 ms have passed), fires dataavailable every timeslice, and stop() returns at once and
# *queues* the last dataavailable (the data since the previous slice): so the seed's
# stopRecording() sends {"command": "stop"} before that last chunk. (test_stt_seed_clients.py
# runs the same class in a real Chromium.)
BROWSER_STAND_IN = r"""
import fs from 'node:fs';
const chunks = JSON.parse(fs.readFileSync(process.env.CHUNKS_FILE, 'utf8'))
  .map((b) => { const data = new Uint8Array(Buffer.from(b, 'base64')); data.size = data.length; return data; });
const shown = {};
globalThis.document = { getElementById: (id) => (shown[id] ??= {
  set textContent(value) { console.log(`#${id} ${value}`); } }) };
globalThis.navigator = { mediaDevices: { getUserMedia: async () => ({ getTracks: () => [{ stop() {} }] }) } };
globalThis.MediaRecorder = class {
  constructor(stream) { this.stream = stream; this.state = 'inactive'; this.sent = 0; }
  recorded() { return Math.min(chunks.length, Math.floor((Date.now() - this.began) / 100) + 1); }
  deliver(upTo) {
    while (this.sent < upTo) this.ondataavailable({ data: chunks[this.sent++] });
  }
  start(timeslice) {
    this.state = 'recording';
    this.began = Date.now();
    this.timer = setInterval(() => this.deliver(this.recorded() - 1), timeslice);
  }
  stop() {
    clearInterval(this.timer);
    this.state = 'inactive';
    const last = this.recorded();
    setTimeout(() => { this.deliver(last); console.log(`RECORDER_DELIVERED ${this.sent}`); }, 0);
  }
};
"""


@pytest.mark.slow  # the seed's client records for 5 s
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_seed_javascript_class_last_chunk_after_stop_joins_the_final(tmp_path) -> None:
    audio = (np.sin(np.arange(7 * 16000) / 7) * 0.3).astype(np.float32)
    chunks = h.container_chunks(audio, "webm")
    (tmp_path / "chunks.json").write_text(json.dumps([base64.b64encode(c).decode() for _, c in chunks]))
    async with running_server(fake_hub()) as srv:
        seed = h.seed_examples()["js"].replace("ws://localhost:8765",
                                               f"ws://127.0.0.1:{srv.ports[PROTOCOL]}")
        script = tmp_path / "client.mjs"
        script.write_text(BROWSER_STAND_IN + seed + "\nsetTimeout(() => process.exit(0), 8000);\n")
        proc = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", "--no-warnings", str(script),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "CHUNKS_FILE": str(tmp_path / "chunks.json")})
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        counters = srv.hub.counters[PROTOCOL]
    lines = out.splitlines()
    assert "停止录音" in lines and "会话已结束" in lines, out
    delivered = int(next(x for x in lines if x.startswith("RECORDER_DELIVERED")).split()[1])
    # The recorder's last chunk went out after the seed's stop command...
    assert lines.index("停止录音") < lines.index(f"RECORDER_DELIVERED {delivered}")
    # ...and still joined the session: no error, every delivered chunk's audio recognised.
    assert counters.errors == {}, (counters.errors, out)
    sent_audio = chunks[delivered - 1][0]
    assert counters.audio_seconds == pytest.approx(sent_audio, abs=0.15), (counters, sent_audio)
    finals = [x.removeprefix("#final ") for x in lines if x.startswith("#final ")]
    assert finals == [" ".join(f"w{i}" for i in range(1, int(counters.audio_seconds / 0.5) + 1))], out
