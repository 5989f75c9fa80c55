"""Bad input over a real socket (an in-process server on loopback): each gets asrhub's error
envelope with a clear message; unusable configuration also closes the connection with the
reason, everything else leaves it open, and an input's problems reach its acknowledgement."""

from __future__ import annotations

import asyncio
import inspect
import json

import aiohttp
import numpy as np
import pytest

from asrhub.hookspecs import hookimpl
from asrhub.testing import make_hub, running_server
from asrhub_plugins.whisper.engine import WhisperEngine

from .conftest import OTHER, read16k, reference

PROTOCOL = "funasr_runtime"
ENGINES = {"engines": {"asr": "whisper", "vad": "silero", "whisper": {"model": "tiny.en",
                                                                      "language": "en"}}}


@pytest.fixture
async def url():
    hub = make_hub({**ENGINES, "protocols": {PROTOCOL: {"max_offline_bytes": 65536,
                                                        "max_message_bytes": 4096}}},
                   only=[PROTOCOL])
    async with running_server(hub) as server:
        yield f"ws://127.0.0.1:{server.ports[PROTOCOL]}/"


async def receive(ws, timeout: float = 60) -> dict:
    msg = await ws.receive(timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connect(session: aiohttp.ClientSession, url: str):
    return await session.ws_connect(url, protocols=("binary",))


OFFLINE = {"mode": "offline", "wav_name": "w", "wav_format": "pcm", "audio_fs": 16000,
           "is_speaking": True}
END = {"is_speaking": False, "is_end": True}


async def test_malformed_json_keeps_the_connection(url):
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        await ws.send_str("{not json")
        error = await receive(ws)
        assert error["code"] == "bad_message" and "JSON" in error["error"]
        assert error["is_final"] is False and "is_end" not in error and "mode" not in error
        await ws.send_str("[1, 2]")
        assert (await receive(ws))["code"] == "bad_message"
        # Still usable: an empty offline input gets its (empty) result and the acknowledgement.
        await ws.send_str(json.dumps(OFFLINE))
        await ws.send_str(json.dumps(END))
        result = await receive(ws)
        assert result == {"mode": "offline", "wav_name": "w", "text": "", "is_final": True}
        assert await receive(ws) == {"mode": "offline", "wav_name": "w", "is_final": True,
                                     "is_end": True}


@pytest.mark.parametrize("config, words", [
    ({"mode": "3pass"}, "unsupported mode '3pass'"),
    ({"mode": "2pass", "wav_format": "mp3"}, "takes raw PCM audio only"),
    ({"mode": "online", "audio_fs": 12345}, "\"audio_fs\" 12345 is not supported"),
    ({"mode": "2pass", "chunk_size": [5, "x", 5]}, "chunk_size"),
    ({"mode": "2pass", "hotwords": "{\"a\": }"}, "hotwords"),
    ({"mode": "2pass", "is_speaking": "maybe"}, "is_speaking"),
])
async def test_unusable_configuration_closes_with_the_reason(url, config, words):
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        await ws.send_str(json.dumps(config))
        error = await receive(ws)
        assert words in error["error"], error
        assert error["is_end"] is True and error["is_final"] is False
        closing = await ws.receive(10)
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        assert ws.close_code == 1008 and words in (closing.extra or ""), closing


async def test_audio_without_an_input(url):
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        await ws.send_bytes(b"\0\0" * 800)
        await ws.send_bytes(b"\0\0" * 800)  # told once, not once per frame
        error = await receive(ws)
        assert error["code"] == "no_input" and "configuration message" in error["error"]
        await ws.send_str(json.dumps(END))
        assert (await receive(ws))["is_end"] is True  # an end with nothing open is acknowledged


async def test_offline_problems_reach_the_acknowledgement(url):
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        # JSON sent as a binary frame in a PCM input, then bytes that are no mp3 at all.
        await ws.send_str(json.dumps(OFFLINE))
        await ws.send_bytes(json.dumps({"is_speaking": False}).encode() * 4)
        error = await receive(ws)
        assert error["code"] == "bad_audio" and error["wav_name"] == "w"
        await ws.send_str(json.dumps({"mode": "online"}))  # no changes inside an input
        assert (await receive(ws))["code"] == "bad_config"
        await ws.send_str(json.dumps(END))
        ack = await receive(ws)
        # Nothing but the bad frame arrived: an empty result comes first.
        if "text" in ack:
            ack = await receive(ws)
        assert ack["is_end"] is True and ack["is_final"] is False and "JSON" in ack["error"]

        await ws.send_str(json.dumps({**OFFLINE, "wav_format": "mp3", "wav_name": "x.mp3"}))
        await ws.send_bytes(b"\x00\x01not an mp3 at all" * 20)
        await ws.send_str(json.dumps(END))
        error = await receive(ws)
        assert error["code"] == "bad_audio" and error["wav_name"] == "x.mp3", error
        ack = await receive(ws)
        assert ack["is_final"] is False and ack["is_end"] is True and "mp3" in ack["error"]


async def test_oversized_message_and_input(url):
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        await ws.send_str(json.dumps(OFFLINE))
        await ws.send_bytes(b"\0\0" * 4096)  # over max_message_bytes (4096)
        error = await receive(ws)
        assert error["code"] == "message_too_big", error
        audio = (read16k(OTHER) * 32767).astype("<i2").tobytes()
        for start in range(0, len(audio), 4000):  # 104 KB: over max_offline_bytes (64 KB)
            await ws.send_bytes(audio[start:start + 4000])
        await ws.send_str(json.dumps(END))
        error = await receive(ws)
        assert error["code"] == "input_too_large", error
        result = await receive(ws, timeout=120)
        assert result["mode"] == "offline" and result["text"]  # the first 2 s, recognised
        ack = await receive(ws)
        assert ack["is_final"] is False and "larger than 65536" in ack["error"]


async def test_two_inputs_on_one_connection_and_odd_frames(url):
    """PCM frames cut at odd byte counts are joined back; a second input follows the first."""
    audio = (np.clip(read16k(OTHER), -1, 1) * 32767).astype("<i2").tobytes()[:60000]
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        for name in ("first", "second"):
            await ws.send_str(json.dumps({**OFFLINE, "wav_name": name}))
            for start in range(0, len(audio), 3001):
                await ws.send_bytes(audio[start:start + 3001])
            await ws.send_str(json.dumps(END))
            result = await receive(ws, timeout=120)
            assert result["wav_name"] == name and result["mode"] == "offline"
            words = result["text"].lower().replace(".", "").split()
            assert words[:2] == reference(OTHER).lower().split()[:2], result
            assert (await receive(ws)) == {"mode": "offline", "wav_name": name,
                                           "is_final": True, "is_end": True}


async def test_binary_subprotocol_is_selected(url):
    """FunASR's client asks for the "binary" subprotocol; FunASR's server selects it."""
    async with aiohttp.ClientSession() as session, await connect(session, url) as ws:
        assert ws.protocol == "binary"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert ws.protocol is None  # the HTML5 page offers none


class Summaries:
    """Collects the session summaries (the ``asrhub_session_closed`` hook)."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    @hookimpl
    def asrhub_session_closed(self, hub, summary) -> None:
        self.items.append(summary)


@pytest.mark.slow
async def test_shutdown_sends_the_results_of_audio_received():
    """Server shutdown mid-input: the utterance heard so far gets its 2pass-offline result,
    the input an acknowledgement saying it was cut short, then the socket closes with 1001."""
    hub = make_hub(ENGINES, only=[PROTOCOL])
    audio = (read16k(OTHER) * 32767).astype("<i2").tobytes()
    async with running_server(hub) as server, aiohttp.ClientSession() as session:
        url = f"ws://127.0.0.1:{server.ports[PROTOCOL]}/"
        async with await connect(session, url) as ws:
            await ws.send_str(json.dumps({"mode": "2pass", "wav_name": "cut", "is_speaking": True}))
            for start in range(0, len(audio), 1920):
                await ws.send_bytes(audio[start:start + 1920])
            await ws.send_str("{")  # answered once every frame before it was taken in
            assert (await receive(ws))["code"] == "bad_message"
            stopping = asyncio.create_task(server.stop())
            got = []
            while (msg := await ws.receive(60)).type == aiohttp.WSMsgType.TEXT:
                got.append(json.loads(msg.data))
            assert ws.close_code == 1001, (msg, got)
            await stopping
    offline = [g for g in got if g.get("mode") == "2pass-offline"]
    assert offline and "birch canoe" in offline[0]["text"].lower(), got
    assert got[-1]["is_end"] is True and got[-1]["is_final"] is False
    assert "shutting down" in got[-1]["error"] and "JSON" in got[-1]["error"]


@pytest.mark.slow
async def test_hotwords_reach_an_engine_with_a_prompt():
    summaries = Summaries()
    hub = make_hub(ENGINES, only=[PROTOCOL], extra_plugins=[summaries])
    audio = (read16k(OTHER) * 32767).astype("<i2").tobytes()
    async with running_server(hub) as server, aiohttp.ClientSession() as session:
        async with await connect(session, f"ws://127.0.0.1:{server.ports[PROTOCOL]}/") as ws:
            await ws.send_str(json.dumps({**OFFLINE, "hotwords": "{\"canoe\": 20, \"planks\": 30}"}))
            await ws.send_bytes(audio)
            await ws.send_str(json.dumps(END))
            result = await receive(ws, timeout=120)
            assert "canoe" in result["text"].lower()
            assert (await receive(ws))["is_final"] is True
    takes_prompt = "prompt" in inspect.signature(WhisperEngine.transcribe).parameters
    assert [s["hotwords"] for s in summaries.items if s["protocol"] == PROTOCOL] == [takes_prompt]
