"""The PTT protocol end to end: a real server on loopback, real clients (the seed's own Python
and JavaScript examples among them), Whisper tiny.en on LibriVox recordings."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import soundfile as sf
import websockets

from asrhub.testing import make_hub, manifest, running_server, wer
from asrhub.testing import testdata_dir as data_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")
# Tests that take the module's `server` fixture load Whisper tiny.en (marked `models` below);
# the limits, shutdown and page tests use the shared fake engines.

HERE = Path(__file__).parent
CLIP_A = "en/pocketsphinx_librivox_ss01_0870.wav"  # 7.1 s
CLIP_B = "en/pocketsphinx_librivox_ss01_0880.wav"  # 3.0 s
CLIP_C = "en/pocketsphinx_librivox_ss01_0930.wav"  # 3.3 s
MAX_WER = 0.25

ENGINES = {"asr": "whisper", "vad": "silero", "whisper": {"model": "tiny.en", "language": "en"}}


def pcm16(name: str) -> bytes:
    samples, rate = sf.read(data_dir() / name, dtype="int16")
    assert rate == 16000 and samples.ndim == 1
    return samples.tobytes()


def reference(*names: str) -> str:
    rows = manifest()
    return " ".join(rows[name]["transcript"] for name in names)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_msg(data: bytes) -> str:
    return json.dumps({"type": "audio", "data": b64(data), "timestamp": int(time.time() * 1000)})


def control(command: str) -> str:
    return json.dumps({"type": "control", "command": command, "timestamp": int(time.time() * 1000)})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server():
    """One server with the models loaded, shared by the tests of this module."""
    hub = make_hub({"server": {"preload": True}, "engines": ENGINES}, only=["ptt"])
    async with running_server(hub, preload=True) as srv:
        yield srv


def url(srv, path: str = "/ws/asr", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{srv.ports['ptt']}{path}"


async def recv_json(ws, timeout: float = 30.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_final(ws, timeout: float = 60.0) -> tuple[list[dict], dict]:
    """Messages up to and including the final result."""
    seen = []
    while True:
        message = await recv_json(ws, timeout)
        seen.append(message)
        if message["type"] == "result" and message["mode"] == "final":
            return seen[:-1], message
        assert message["type"] != "error", message


# ---------------------------------------------------------------------------- the seed's clients

# The seed README's Python example, verbatim but for the missing ``import time`` (added) and
# the address of the server under test. ``audio_data`` is set by the prelude below.
SEED_PYTHON_EXAMPLE = '''
import asyncio
import websockets
import json
import base64
import numpy as np

async def test_asr():
    uri = "ws://localhost:9999/ws/asr"

    async with websockets.connect(uri) as websocket:
        # 1. 接收连接确认
        response = await websocket.recv()
        print(f"连接成功: {response}")

        # 2. 发送 start 指令
        await websocket.send(json.dumps({
            "type": "control",
            "command": "start",
            "timestamp": int(time.time() * 1000)
        }))

        # 3. 发送音频数据
        # 假设 audio_data 是 16kHz, 单声道, PCM 格式的音频
        audio_base64 = base64.b64encode(audio_data).decode()
        await websocket.send(json.dumps({
            "type": "audio",
            "data": audio_base64,
            "timestamp": int(time.time() * 1000)
        }))

        # 4. 接收识别结果
        result = await websocket.recv()
        result_json = json.loads(result)
        print(f"识别结果: {result_json['text']}")

        # 5. 发送 stop 指令
        await websocket.send(json.dumps({
            "type": "control",
            "command": "stop",
            "timestamp": int(time.time() * 1000)
        }))

asyncio.run(test_asr())
'''


@pytest.mark.models
async def test_seed_python_client_gets_the_text(server):
    prelude = ("import time\nimport soundfile\n"
               f"audio_data = soundfile.read({str(data_dir() / CLIP_A)!r}, dtype='int16')[0].tobytes()\n")
    source = prelude + SEED_PYTHON_EXAMPLE.replace("ws://localhost:9999", url(server, ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", source, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    status = json.loads(lines[0].removeprefix("连接成功: "))
    assert status["type"] == "status" and status["code"] == 200
    text = lines[1].removeprefix("识别结果: ")
    assert wer(reference(CLIP_A), text) <= MAX_WER, text


# The seed README's JavaScript example, verbatim but for the server's address (Node resolves
# "localhost" to ::1 first; the test server listens on 127.0.0.1).
SEED_JS_EXAMPLE = r"""
// 建立 WebSocket 连接
const ws = new WebSocket('ws://localhost:9999/ws/asr');

ws.onopen = () => {
    console.log('WebSocket 连接已建立');
};

ws.onmessage = (event) => {
    const data = JSON.parse(event.data);

    if (data.type === 'result') {
        console.log('识别结果:', data.text);
    } else if (data.type === 'status') {
        console.log('状态:', data.message);
    }
};

// 发送开始指令
function startRecording() {
    ws.send(JSON.stringify({
        type: 'control',
        command: 'start',
        timestamp: Date.now()
    }));
}

// 发送音频数据
function sendAudio(audioData) {
    // audioData 应该是 Base64 编码的 PCM 数据
    ws.send(JSON.stringify({
        type: 'audio',
        data: audioData,
        timestamp: Date.now()
    }));
}

// 发送停止指令
function stopRecording() {
    ws.send(JSON.stringify({
        type: 'control',
        command: 'stop',
        timestamp: Date.now()
    }));
}
"""

# Drives the example's own functions like a page would: start, 200 ms chunks, stop.
JS_DRIVER = r"""
const fs = require('fs');
const pcm = fs.readFileSync(process.env.PCM_FILE);
ws.addEventListener('message', (event) => {
    const data = JSON.parse(event.data);
    if (data.type === 'result' && data.mode === 'final') {
        console.log('FINAL ' + JSON.stringify(data));
        ws.close();
    }
});
ws.addEventListener('open', async () => {
    startRecording();
    for (let i = 0; i < pcm.length; i += 6400) {
        sendAudio(pcm.subarray(i, i + 6400).toString('base64'));
        await new Promise((r) => setTimeout(r, 20));
    }
    stopRecording();
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.models
async def test_seed_javascript_client_gets_partials_and_the_final(server, tmp_path):
    raw = tmp_path / "clip.pcm"
    raw.write_bytes(pcm16(CLIP_B))
    script = tmp_path / "client.js"
    script.write_text(SEED_JS_EXAMPLE.replace("ws://localhost:9999", url(server, "")) + JS_DRIVER)
    proc = await asyncio.create_subprocess_exec(
        "node", "--experimental-websocket", "--no-warnings", str(script),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PCM_FILE": str(raw)})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "WebSocket 连接已建立"
    assert lines[1] == "状态: connected"
    assert any(line.startswith("识别结果: ") for line in lines[2:])
    final = json.loads(next(line for line in lines if line.startswith("FINAL "))[6:])
    assert wer(reference(CLIP_B), final["text"]) <= MAX_WER, final


# ---------------------------------------------------------------------------- streaming


@pytest.mark.slow
@pytest.mark.models
async def test_partials_arrive_while_a_10s_clip_streams_at_3x(server):
    pcm = pcm16(CLIP_A) + pcm16(CLIP_B)  # 10.1 s, one LibriVox reader
    chunk = 3200  # 100 ms
    async with websockets.connect(url(server)) as ws:
        assert (await recv_json(ws))["type"] == "status"
        messages: list[tuple[float, dict]] = []

        async def reader():
            while True:
                message = await recv_json(ws, 120)
                messages.append((time.monotonic(), message))
                if message.get("mode") == "final":
                    return

        reading = asyncio.create_task(reader())
        await ws.send(control("start"))
        for i in range(0, len(pcm), chunk):
            await ws.send(audio_msg(pcm[i:i + chunk]))
            await asyncio.sleep(0.1 / 3)
        stop_sent = time.monotonic()
        await ws.send(control("stop"))
        await asyncio.wait_for(reading, 120)
    assert all(m["type"] == "result" for _, m in messages), messages
    early = [m for t, m in messages if t < stop_sent and m["mode"] == "partial" and m["text"]]
    assert len(early) >= 2, f"only {len(early)} non-empty partials before stop"
    assert len({m["text"] for m in early}) >= 2  # the text grew while audio was arriving
    final = messages[-1][1]
    assert wer(reference(CLIP_A, CLIP_B), final["text"]) <= MAX_WER, final["text"]
    assert 0 < final["confidence"] <= 1 and final["processing_time_ms"] > 0


@pytest.mark.models
async def test_final_joins_the_utterances_of_one_hold(server):
    """A pause inside one hold: the engine ends an utterance there; the final has both."""
    pcm = pcm16(CLIP_B) + bytes(2 * 16000 * 2) + pcm16(CLIP_C)  # 2 s of silence between
    async with websockets.connect(url(server)) as ws:
        await recv_json(ws)
        await ws.send(control("start"))
        for i in range(0, len(pcm), 16000):
            await ws.send(audio_msg(pcm[i:i + 16000]))
        await ws.send(control("stop"))
        partials, final = await until_final(ws)
    assert wer(reference(CLIP_B, CLIP_C), final["text"]) <= MAX_WER, final["text"]
    assert any("young man" in p["text"].lower() for p in partials), (partials, final)

@pytest.mark.models
async def test_several_rounds_on_one_connection(server):
    async with websockets.connect(url(server)) as ws:
        await recv_json(ws)
        for clip, chunk in ((CLIP_B, None), (CLIP_C, 8000), (CLIP_B, 16000)):
            pcm = pcm16(clip)
            await ws.send(control("start"))
            for i in range(0, len(pcm), chunk or len(pcm)):
                await ws.send(audio_msg(pcm[i:i + (chunk or len(pcm))]))
            await ws.send(control("stop"))
            partials, final = await until_final(ws)
            assert all(p["mode"] == "partial" for p in partials)
            assert wer(reference(clip), final["text"]) <= MAX_WER, (clip, final["text"])


@pytest.mark.models
async def test_reset_drops_what_was_said_before(server):
    async with websockets.connect(url(server)) as ws:
        await recv_json(ws)
        await ws.send(control("start"))
        await ws.send(audio_msg(pcm16(CLIP_A)))
        first = await recv_json(ws)
        assert first["mode"] == "partial" and "dashwood" in first["text"].lower()
        await ws.send(control("reset"))
        await ws.send(audio_msg(pcm16(CLIP_C)))
        await ws.send(control("stop"))
        _, final = await until_final(ws)
        assert wer(reference(CLIP_C), final["text"]) <= MAX_WER, final["text"]
        assert "dashwood" not in final["text"].lower()


# ---------------------------------------------------------------------------- bad input


@pytest.mark.models
async def test_bad_inputs_one_by_one_then_a_normal_round(server):
    odd = b64(b"\x00\x01\x02")
    cases = [
        ("{not json", 400),
        (json.dumps(["audio"]), 400),
        (json.dumps({"type": "video", "data": "x"}), 400),
        (json.dumps({"type": "control", "command": "pause"}), 400),
        (audio_msg(pcm16(CLIP_B)[:3200]), 409),  # audio before start
        (control("stop"), 409),  # stop before start
        (control("start"), None),
        (control("start"), 409),  # start twice
        (json.dumps({"type": "audio", "data": "%%% not base64 %%%"}), 400),
        (json.dumps({"type": "audio", "data": odd}), 400),
        (json.dumps({"type": "audio"}), 400),
        (b"\x00\x01", 400),  # binary frame
    ]
    async with websockets.connect(url(server)) as ws:
        await recv_json(ws)
        for message, code in cases:
            await ws.send(message)
            if code is None:
                continue
            reply = await recv_json(ws)
            assert reply["type"] == "error" and reply["code"] == code, (message[:40], reply)
            assert reply["message"] and isinstance(reply["timestamp"], int)
        # still recording from the accepted start: the connection is fully usable
        await ws.send(audio_msg(pcm16(CLIP_B)))
        await ws.send(control("stop"))
        _, final = await until_final(ws)
        assert wer(reference(CLIP_B), final["text"]) <= MAX_WER, final["text"]


def limits_hub(**ptt):
    # The shared fake engines: these tests check the protocol, not recognition.
    return make_hub({"protocols": {"ptt": ptt}}, only=["ptt"], fake_engines=True)


async def test_too_large_message_is_413_and_the_connection_survives():
    async with running_server(limits_hub(max_message_bytes=4096)) as srv:
        async with websockets.connect(url(srv), max_size=None) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "audio", "data": "A" * 5000}))
            reply = await recv_json(ws)
            assert reply["code"] == 413 and "4096" in reply["message"]
            await ws.send(control("stop"))
            assert (await recv_json(ws))["code"] == 409  # still served
            await ws.send("x" * 20000)  # over four times the limit: the transport gives up
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv_json(ws)
            assert info.value.rcvd.code == 1009


async def test_connections_over_the_limit_get_503_then_close():
    async with running_server(limits_hub(max_connections=1)) as srv:
        async with websockets.connect(url(srv)) as first:
            assert (await recv_json(first))["code"] == 200
            async with websockets.connect(url(srv)) as second:
                reply = await recv_json(second)
                assert reply["type"] == "error" and reply["code"] == 503
                assert "too many connections" in reply["message"]
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await recv_json(second)
                assert info.value.rcvd.code == 1013
            await first.send(control("stop"))
            assert (await recv_json(first))["code"] == 409  # the first one is unaffected
        async with aiohttp.ClientSession() as http:
            async with http.get(url(srv, "/stats", "http")) as resp:
                assert (await resp.json())["connections"]["rejected"] == 1


async def test_idle_connection_gets_408_then_close():
    # Heartbeat pings answered by the client are not activity; a message restarts the clock.
    async with running_server(limits_hub(idle_timeout_s=0.6, heartbeat_s=0.1)) as srv:
        async with websockets.connect(url(srv)) as ws:
            opened = time.monotonic()
            await recv_json(ws)
            await asyncio.sleep(0.3)
            await ws.send(control("stop"))
            assert (await recv_json(ws))["code"] == 409
            reply = await recv_json(ws, 5)
            assert reply["type"] == "error" and reply["code"] == 408
            assert time.monotonic() - opened > 0.85  # the stop restarted the clock
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv_json(ws, 5)
            assert info.value.rcvd.code == 1000 and info.value.rcvd.reason == "idle timeout"


# ---------------------------------------------------------------------------- HTTP


@pytest.mark.models
async def test_service_info(server):
    async with aiohttp.ClientSession() as http:
        async with http.get(url(server, "/", "http")) as resp:
            assert resp.status == 200
            info = await resp.json()
    assert info["name"] == "asrhub" and info["version"]
    assert {"name": "ptt", "port": server.ports["ptt"]}.items() <= info["protocols"][0].items()
    assert info["engine"] == "whisper" and info["model"] == "tiny.en"
    assert info["websocket"] == "/ws/asr"


@pytest.mark.models
async def test_health_is_503_while_loading_then_200():
    hub = make_hub({"engines": ENGINES}, only=["ptt"])
    port = hub.listener("ptt").config.port
    seen: list[tuple[int, dict]] = []

    async def poll():
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        seen.append((resp.status, await resp.json()))
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.01)

    polling = asyncio.create_task(poll())
    async with running_server(hub, preload=True):
        await asyncio.wait_for(polling, 30)
    loading = [body for status, body in seen if status == 503]
    assert loading and loading[0]["reason"] == "loading models"
    assert seen[-1][0] == 200 and seen[-1][1]["status"] == "ok"


@pytest.mark.models
async def test_stats_after_traffic(server):
    async with websockets.connect(url(server)) as ws:
        await recv_json(ws)
        await ws.send(control("start"))
        await ws.send(audio_msg(pcm16(CLIP_C)))
        await ws.send(control("stop"))
        await until_final(ws)
        async with aiohttp.ClientSession() as http:
            async with http.get(url(server, "/stats", "http")) as resp:
                assert resp.status == 200
                stats = await resp.json()
    assert stats["connections"]["open"] >= 1 and stats["connections"]["total"] >= 1
    assert stats["sessions"]["total"] >= 1 and stats["sessions"]["active"] == 0
    assert stats["audio_seconds"] >= 3.0
    final_ms = stats["processing_ms"]["final"]
    assert final_ms["count"] >= 1 and 0 < final_ms["avg"] and final_ms["p50"] <= final_ms["p99"]
    assert stats["processing_ms"]["partial"]["count"] >= 1
    assert isinstance(stats["queue_depth"], int) and stats["executor"]["workers"] >= 1
    assert stats["uptime_s"] >= 0 and "p99" in stats["event_loop_lag_ms"]


@pytest.mark.models
async def test_test_page_is_the_demo_page_opened_on_ptt(server):
    async with aiohttp.ClientSession() as http:
        # The seed: GET /test returns the test page itself (HTML), not a redirect.
        async with http.get(url(server, "/test", "http"), allow_redirects=False) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
        assert 'src="app.js"' in page and '<base href="/test/">' in page
        # No ?protocol= needed: the page's first (default) protocol is ptt.
        assert page.split('<select id="protocol">')[1].split("<option", 2)[1].startswith(' value="ptt"')
        async with http.get(url(server, "/test/", "http")) as resp:
            assert resp.status == 200 and await resp.text() == page
        for asset in ("app.js", "pcm-worklet.js", "style.css", "vendor/spark-md5.min.js"):
            async with http.get(url(server, f"/test/{asset}", "http")) as resp:
                assert resp.status == 200, asset
        async with http.get(url(server, "/test/app.js", "http")) as resp:
            assert "/ws/asr" in await resp.text()


async def test_test_page_and_assets_load_without_the_token():
    async with running_server(limits_hub(token="s3cret")) as srv, aiohttp.ClientSession() as http:
        for path in ("/test", "/test/app.js", "/test/style.css"):
            async with http.get(url(srv, path, "http")) as resp:
                assert resp.status == 200, path
        async with http.get(url(srv, "/stats", "http")) as resp:
            assert resp.status == 401  # everything else still needs it
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url(srv))


async def test_shutdown_sends_the_final_of_a_hold_in_progress_then_1001():
    srv_cm = running_server(limits_hub())
    srv = await srv_cm.__aenter__()
    stopped = False
    try:
        async with websockets.connect(url(srv)) as ws:
            await recv_json(ws)
            await ws.send(control("start"))
            await ws.send(audio_msg(bytes(2 * 16000 * 2)))  # 2 s: four words of the fake engine
            assert (await recv_json(ws))["mode"] == "partial"
            await srv_cm.__aexit__(None, None, None)
            stopped = True
            final = await recv_json(ws, 10)
            assert final["type"] == "result" and final["mode"] == "final"
            assert final["text"] == "w1 w2 w3 w4"
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv_json(ws, 10)
            assert info.value.rcvd.code == 1001
    finally:
        if not stopped:
            await srv_cm.__aexit__(None, None, None)


async def test_one_connection_is_one_closed_session_in_the_metrics():
    async with running_server(limits_hub()) as srv:
        for _ in range(2):
            async with websockets.connect(url(srv)) as ws:
                await recv_json(ws)
                for _ in range(2):  # two holds on one connection
                    await ws.send(control("start"))
                    await ws.send(audio_msg(bytes(16000 * 2)))
                    await ws.send(control("stop"))
                    await until_final(ws)
        hub = srv.hub
        for _ in range(200):
            if hub.counters["ptt"].sessions_total == 2:
                break
            await asyncio.sleep(0.01)
        assert hub.counters["ptt"].sessions_total == 2
        metrics = hub.metrics.render().decode()
        assert 'asrhub_sessions_total{protocol="ptt"} 2.0' in metrics
        assert 'asrhub_audio_seconds_total{protocol="ptt"} 4.0' in metrics


async def test_shutdown_during_a_stop_still_sends_its_final():
    hub = make_hub({"protocols": {"ptt": {}}, "engines": {"fake": {"delay_s": 0.2}}},
                   only=["ptt"], fake_engines=True)
    srv_cm = running_server(hub)
    srv = await srv_cm.__aenter__()
    stopped = False
    try:
        async with websockets.connect(url(srv)) as ws:
            await recv_json(ws)
            await ws.send(control("start"))
            for _ in range(4):  # 0.5 s each; engine calls of 0.2 s queued behind the stop
                await ws.send(audio_msg(bytes(16000)))
            await ws.send(control("stop"))
            await asyncio.sleep(0.1)  # the stop is waiting for the engine
            await srv_cm.__aexit__(None, None, None)
            stopped = True
            seen = []
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    seen.append(await recv_json(ws, 10))
            assert info.value.rcvd.code == 1001
            finals = [m for m in seen if m.get("mode") == "final"]
            assert len(finals) == 1 and finals[0]["text"] == "w1 w2 w3 w4", seen
            assert "error" not in [m["type"] for m in seen], seen
    finally:
        if not stopped:
            await srv_cm.__aexit__(None, None, None)
