"""vad_stream end to end: a real server on loopback, real clients (the seed's own Python
examples among them), Silero VAD, Whisper tiny.en, Resemblyzer and the JSON voiceprint store
on real recordings."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
import pytest_asyncio
import websockets

from asrhub.testing import make_hub, running_server, wer

from .conftest import (
    CHUNK,
    CLIP_AMIABLE,
    CLIP_GO,
    CLIP_NOT_ILL,
    ENGINES,
    SPK1_ENROLL,
    SPK1_TEST,
    SPK2_TEST,
    chunks,
    command,
    pcm16,
    recv_json,
    recv_until,
    silence,
    transcript,
    utterance,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vad-stream-state")


def hub_for(state_dir: Path, **protocol: object):
    return make_hub({"server": {"state_dir": str(state_dir)}, "engines": ENGINES,
                     "protocols": {"vad_stream": dict(protocol)}}, only=["vad_stream"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(state_dir: Path):
    """One server with ASR and VAD loaded, shared by the tests of this module."""
    async with running_server(hub_for(state_dir), preload=True) as srv:
        yield srv


def ws_url(srv) -> str:
    return f"ws://127.0.0.1:{srv.ports['vad_stream']}/"


def load_seed_client(name: str) -> tuple[ModuleType, list[str]]:
    """A fresh copy of a seed client module, its ``print`` captured."""
    spec = importlib.util.spec_from_file_location(f"{name}_{time.monotonic_ns()}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    printed: list[str] = []
    module.print = lambda *args, **kw: printed.append(" ".join(str(a) for a in args))  # type: ignore[attr-defined]
    return module, printed


async def send_realtime(ws, data: bytes, interval: float = 0.02) -> None:
    """The seed's pacing: 640 bytes every 20 ms, on an absolute schedule (no drift)."""
    started = time.monotonic()
    for index, piece in enumerate(chunks(data, CHUNK)):
        await ws.send(piece)
        delay = started + (index + 1) * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def errors(messages: list[dict]) -> list[int]:
    return [m["code"] for m in messages if m["type"] == "error"]


# ---------------------------------------------------------------------------- the seed's clients


async def test_seed_python_batch_example(server, tmp_path):
    """批量识别示例 (Python), verbatim, on a raw PCM file (the example's test_audio.pcm)."""
    audio_file = tmp_path / "test_audio.pcm"
    audio_file.write_bytes(pcm16(CLIP_NOT_ILL) + silence(0.3) + pcm16(CLIP_AMIABLE))
    client, printed = load_seed_client("seed_batch_client")
    text = await asyncio.wait_for(client.batch_asr(str(audio_file), ws_url(server)), 120)
    reference = transcript(CLIP_NOT_ILL) + " " + transcript(CLIP_AMIABLE)
    assert text is not None and wer(reference, text) <= 0.3, (text, printed)
    assert any(line.startswith("服务端响应: {'type': 'batch_progress', 'state': 'receiving'")
               for line in printed), printed
    assert "状态: recognizing" in printed and "状态: complete" not in printed  # returns at batch_result
    size = audio_file.stat().st_size
    assert f"采样点数: {size // 2}" in printed
    assert f"音频时长: {size / 32000:.2f} 秒" in printed
    assert any(line.startswith("已接收: ") for line in printed)  # progress while receiving


class _SharedConnection:
    """Stands in for ``websockets`` in the seed's streaming client: its ``connect`` yields a
    connection the test also sends audio on (the seed's client only listens)."""

    def __init__(self, ws) -> None:
        self.ws = ws

    def connect(self, url: str):
        @contextlib.asynccontextmanager
        async def opened():
            yield self.ws

        return opened()


@pytest.mark.slow
async def test_seed_python_streaming_client_with_a_realtime_sender(server):
    """客户端实现示例 (Python) listening while a sender streams 640-byte chunks every 20 ms."""
    client, printed = load_seed_client("seed_stream_client")
    async with websockets.connect(ws_url(server)) as ws:
        client.websockets = _SharedConnection(ws)
        listener = asyncio.create_task(client.asr_client(ws_url(server)))
        started = time.monotonic()
        await send_realtime(ws, utterance(CLIP_GO, before=0.3, after=1.2))
        sent_for = time.monotonic() - started
        deadline = time.monotonic() + 30
        while "最终结果" not in printed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    assert sent_for >= 0.95 * (0.3 + 2.786 + 1.2)  # it really was real time
    assert printed[0] == "Connected to ASR server"
    assert printed[1] == "语音开始", printed
    assert printed[2].startswith("语音结束，时长: ") and ", 采样点: " in printed[2]
    result = [line for line in printed if line.startswith("识别结果: ")]
    assert len(result) == 1 and printed[-1] == "最终结果", printed
    assert wer(transcript(CLIP_GO), result[0][len("识别结果: "):]) <= 0.25, result


@pytest.mark.slow
async def test_fast_sender_gets_every_segment_in_order(server):
    """Faster than real time (behaviour is the same: the VAD counts samples, not seconds)."""
    clips = [CLIP_NOT_ILL, CLIP_GO, CLIP_AMIABLE]
    async with websockets.connect(ws_url(server)) as ws:
        for piece in chunks(b"".join(utterance(c) for c in clips)):
            await ws.send(piece)
        seen = await recv_until(ws, lambda m: m["type"] == "result" and m["segment_id"] == 3)
    events = [m["event"] for m in seen if m["type"] == "vad"]
    assert events == ["speech_start", "speech_end"] * 3
    results = [m for m in seen if m["type"] == "result"]
    assert [r["segment_id"] for r in results] == [1, 2, 3]
    # A segment's result never comes before its speech_end.
    ends = [i for i, m in enumerate(seen) if m.get("event") == "speech_end"]
    for end_index, result in zip(ends, results, strict=True):
        assert seen.index(result) > end_index
    for clip, result in zip(clips, results, strict=True):
        assert wer(transcript(clip), result["text"]) <= 0.35, (clip, result["text"])
        assert set(result) == {"type", "text", "is_final", "is_speeching", "timestamp", "segment_id"}
    durations = [m["duration"] for m in seen if m.get("event") == "speech_end"]
    assert all(1.5 <= d <= 5.0 for d in durations), durations


# ---------------------------------------------------------------------------- error codes


async def test_every_error_code_and_the_connection_survives(server):
    async with websockets.connect(ws_url(server)) as ws:
        async def expect(code: int, *messages: str | bytes) -> dict:
            for message in messages:
                await ws.send(message)
            seen = await recv_until(ws, lambda m: m["type"] == "error")
            assert seen[-1]["code"] == code, seen
            assert isinstance(seen[-1]["message"], str) and seen[-1]["timestamp"] > 1e12
            return seen[-1]

        await expect(1, "this is not json")
        await expect(3, command("launch"))
        await expect(4, command("batch_end"))
        await expect(5, command("batch_start"), command("batch_end"))
        await expect(6, command("batch_start"), silence(0.2), command("batch_end"))
        # 2: processing failed. tiny.en refuses Mandarin; the engine's error reaches the client.
        failure = await expect(2, command("batch_start", language="中文"), pcm16(CLIP_GO),
                               command("batch_end"))
        assert "Recognition failed" in failure["message"]
        await expect(10, command("speaker_register_start"))
        await expect(11, command("speaker_register_end"))
        await expect(12, command("speaker_register_start", user_id="nobody"), command("speaker_register_end"))
        too_short = await expect(13, command("speaker_register_start", user_id="nobody"),
                                 silence(2.1), command("speaker_register_end"))
        assert too_short["message"] == "Audio too short: 2.1s < 3s"
        await expect(14, command("speaker_register_start", user_id="nobody"), silence(3.5),
                     command("speaker_register_end"))
        await expect(15, command("speaker_verify_enable"))
        await expect(16, command("speaker_verify_enable", user_id="never-registered"))
        await ws.send(command("ping"))
        assert await recv_json(ws) == {"type": "pong"}
    counted = server.hub.counters["vad_stream"].errors
    assert {str(c) for c in (1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16)} <= set(counted)


async def test_reset_replies_and_returns_to_streaming(server):
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send(command("batch_start"))
        assert (await recv_json(ws))["state"] == "receiving"
        await ws.send(pcm16(CLIP_GO))
        await ws.send(command("reset"))
        seen = await recv_until(ws, lambda m: m["type"] == "reset")
        assert seen[-1] == {"type": "reset", "message": "State reset successfully"}
        await ws.send(command("batch_end"))
        assert (await recv_json(ws))["code"] == 4
        await ws.send(utterance(CLIP_GO))
        seen = await recv_until(ws, lambda m: m["type"] == "result")
        assert seen[-1]["segment_id"] == 1


async def test_plain_http_get_on_the_websocket_port(server):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.ports['vad_stream']}/") as resp:
            assert resp.status == 426
            assert (await resp.json())["protocol"] == "vad_stream"
        async with http.get(f"http://127.0.0.1:{server.ports['vad_stream']}/health") as resp:
            assert resp.status == 200


# ---------------------------------------------------------------------------- speakers


async def register(ws, user_id: str, clip: str) -> list[dict]:
    await ws.send(command("speaker_register_start", user_id=user_id))
    started = await recv_json(ws)
    assert started["type"] == "speaker_register_progress" and started["state"] == "started"
    assert user_id in started["message"]
    for piece in chunks(pcm16(clip), 3200):
        await ws.send(piece)
    await ws.send(command("speaker_register_end"))
    return await recv_until(ws, lambda m: m["type"] in ("speaker_register_result", "error"), 120)


@pytest.mark.slow
async def test_register_verify_accept_and_reject(server):
    async with websockets.connect(ws_url(server)) as ws:
        seen = await register(ws, "spk1", SPK1_ENROLL)
        result = seen[-1]
        assert result["type"] == "speaker_register_result", seen
        assert result["success"] is True and result["user_id"] == "spk1"
        assert result["duration"] == pytest.approx(len(pcm16(SPK1_ENROLL)) / 32000, abs=1e-3)
        progress = [m for m in seen if m["type"] == "speaker_register_progress"]
        assert progress and progress[0]["state"] == "receiving" and progress[0]["received_bytes"] >= 64000

        await ws.send(command("speaker_list"))
        listing = await recv_json(ws)
        assert listing["type"] == "speaker_list" and listing["count"] == len(listing["speakers"])
        entry = next(s for s in listing["speakers"] if s["user_id"] == "spk1")
        assert entry["dimension"] == 256 and abs(entry["registered_at"] - time.time()) < 600

        await ws.send(command("speaker_verify_enable", user_id="spk1", required=True))
        enabled = await recv_json(ws)
        assert (enabled["type"], enabled["user_id"], enabled["required"]) == ("speaker_verify_enabled", "spk1", True)

        # The same speaker, another recording: verified first, then recognised.
        await ws.send(utterance(SPK1_TEST))
        seen = await recv_until(ws, lambda m: m["type"] in ("result", "error"))
        kinds = [m["type"] if m["type"] != "vad" else m["event"] for m in seen]
        assert kinds == ["speech_start", "speech_end", "speaker_verify_result", "result"], seen
        verdict = seen[2]
        assert verdict["success"] is True and verdict["user_id"] == "spk1"
        assert verdict["score"] >= verdict["threshold"] > 0.3  # the engine's calibrated threshold
        assert wer(transcript(SPK1_TEST), seen[-1]["text"]) <= 0.35, seen[-1]["text"]

        # Another speaker with required=true: rejected, no ASR result.
        await ws.send(utterance(SPK2_TEST))
        seen = await recv_until(ws, lambda m: m["type"] == "speaker_verify_result")
        assert seen[-1]["success"] is False and seen[-1]["score"] < seen[-1]["threshold"]
        await ws.send(command("ping"))
        after = await recv_until(ws, lambda m: m["type"] == "pong")
        assert [m["type"] for m in after] == ["pong"]  # no result for the rejected segment

        # required=false: the verdict is reported and the text comes anyway.
        await ws.send(command("speaker_verify_enable", user_id="spk1", required=False))
        assert (await recv_json(ws))["required"] is False
        await ws.send(utterance(SPK2_TEST))
        seen = await recv_until(ws, lambda m: m["type"] == "result")
        verdicts = [m for m in seen if m["type"] == "speaker_verify_result"]
        assert len(verdicts) == 1 and verdicts[0]["success"] is False

        await ws.send(command("speaker_verify_disable"))
        assert (await recv_json(ws))["type"] == "speaker_verify_disabled"
        await ws.send(utterance(SPK2_TEST))
        seen = await recv_until(ws, lambda m: m["type"] == "result")
        assert not any(m["type"] == "speaker_verify_result" for m in seen)


@pytest.mark.slow
async def test_a_new_server_on_the_same_state_keeps_the_speaker(server, state_dir):
    """Registered in the module's server (the test above); a fresh hub reads it back."""
    async with websockets.connect(ws_url(server)) as ws:  # make sure spk1 exists even alone
        await ws.send(command("speaker_list"))
        if not any(s["user_id"] == "spk1" for s in (await recv_json(ws))["speakers"]):
            assert (await register(ws, "spk1", SPK1_ENROLL))[-1]["success"] is True
    async with running_server(hub_for(state_dir)) as fresh:
        async with websockets.connect(ws_url(fresh)) as ws:
            await ws.send(command("speaker_list"))
            assert "spk1" in [s["user_id"] for s in (await recv_json(ws))["speakers"]]
            await ws.send(command("speaker_verify_enable", user_id="spk1"))
            assert (await recv_json(ws))["type"] == "speaker_verify_enabled"
            await ws.send(utterance(SPK1_TEST))
            seen = await recv_until(ws, lambda m: m["type"] in ("result", "error"))
            assert [m for m in seen if m["type"] == "speaker_verify_result"][0]["success"] is True
            assert seen[-1]["type"] == "result"


async def test_global_verification_from_config(server, state_dir):
    """SPEAKER_VERIFICATION_REQUIRED + _DEFAULT_USER: the model loads at start-up and every
    session verifies every segment, from the first, without asking."""
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send(command("speaker_list"))
        if not any(s["user_id"] == "spk1" for s in (await recv_json(ws))["speakers"]):
            assert (await register(ws, "spk1", SPK1_ENROLL))[-1]["success"] is True
    hub = hub_for(state_dir, speaker_verification_required=True,
                  speaker_verification_default_user="spk1")
    async with running_server(hub) as enforced:
        assert hub.loaded_engine("speaker") is not None  # loaded before serving, not lazily
        async with websockets.connect(ws_url(enforced)) as ws:
            await ws.send(utterance(SPK2_TEST))
            seen = await recv_until(ws, lambda m: m["type"] == "speaker_verify_result")
            assert seen[-1]["user_id"] == "spk1" and seen[-1]["success"] is False
            await ws.send(command("speaker_verify_disable"))
            refused = await recv_json(ws)
            assert refused["type"] == "error" and refused["code"] == 2
            await ws.send(command("reset"))
            reset = await recv_until(ws, lambda m: m["type"] == "reset")
            assert "re-enabled by global config" in reset[-1]["message"]
            await ws.send(utterance(SPK1_TEST))
            seen = await recv_until(ws, lambda m: m["type"] == "result")
            assert [m["success"] for m in seen if m["type"] == "speaker_verify_result"] == [True]


async def test_lazy_speaker_model(tmp_path):
    hub = hub_for(tmp_path)
    async with running_server(hub) as srv:
        assert hub.loaded_engine("speaker") is None
        async with websockets.connect(ws_url(srv)) as ws:
            await ws.send(command("ping"))
            assert await recv_json(ws) == {"type": "pong"}
        assert hub.loaded_engine("speaker") is None


# ---------------------------------------------------------------------------- static HTTP


async def test_static_site_serves_web_dir(tmp_path):
    site = tmp_path / "site"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_text("<!doctype html><title>vad</title>", encoding="utf-8")
    (site / "js" / "app.js").write_text("console.log('hi');", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("no", encoding="utf-8")
    hub = hub_for(tmp_path / "state", web_dir=str(site))
    async with running_server(hub) as srv:
        base = f"http://127.0.0.1:{srv.ports['vad_stream.static']}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as resp:
                assert resp.status == 200 and "<title>vad</title>" in await resp.text()
                assert resp.headers["Content-Type"].startswith("text/html")
            async with http.get(base + "/js/app.js") as resp:
                assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
            async with http.get(base + "/missing.css") as resp:
                assert resp.status == 404
            async with http.get(base + "/..%2Fsecret.txt") as resp:
                assert resp.status in (403, 404)
            async with http.get(base + "/js/../../secret.txt") as resp:
                assert resp.status in (403, 404)
            for path in ("/health", "/services"):  # the core's routes still work on this port
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
            async with http.get(base + "/services") as resp:
                names = [p["name"] for p in (await resp.json())["protocols"]]
                assert {"vad_stream", "vad_stream.static"} <= set(names)


async def test_static_site_defaults_to_the_bundled_demo_page(tmp_path):
    from asrhub.paths import web_dir

    index = web_dir() / "index.html"
    if not index.is_file():
        pytest.skip("no web/index.html in this checkout")
    async with running_server(hub_for(tmp_path)) as srv:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{srv.ports['vad_stream.static']}/") as resp:
                assert resp.status == 200
                assert await resp.read() == index.read_bytes()


async def test_config_rejects_bad_settings(tmp_path):
    from asrhub.config import ConfigError

    with pytest.raises(ConfigError, match="speaker_verification_default_user"):
        hub_for(tmp_path, speaker_verification_required=True)
    with pytest.raises(ConfigError, match="unknown key"):
        hub_for(tmp_path, VAD_THRESHOLD=0.5)
    with pytest.raises(ConfigError, match="ns_enabled"):
        async with running_server(hub_for(tmp_path, ns_enabled=True)):
            pass
    with pytest.raises(ConfigError, match="language"):
        async with running_server(hub_for(tmp_path, language="Klingon")):
            pass


async def test_connection_limit(tmp_path):
    hub = hub_for(tmp_path, max_connections=1)
    async with running_server(hub) as srv:
        async with websockets.connect(ws_url(srv)) as first:
            async with websockets.connect(ws_url(srv)) as second:
                refused = await recv_json(second)
                assert refused["type"] == "error" and refused["code"] == 2
                assert "too many connections" in refused["message"]
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await recv_json(second)
                assert closed.value.rcvd.code == 1013
            await first.send(command("ping"))
            assert await recv_json(first) == {"type": "pong"}


# ---------------------------------------------------------------------------- seed gaps (issue 11)


class _Recorded:
    """A ``websockets`` connection whose ``recv`` also keeps every message (the seed's client
    prints only the types it knows; the test wants all of them, in order)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen: list[dict] = []

    async def recv(self):
        message = await self.ws.recv()
        self.seen.append(json.loads(message))
        return message

    async def send(self, message) -> None:
        await self.ws.send(message)


async def test_seed_client_keeps_the_text_of_a_segment_too_short_for_a_voiceprint(server):
    """Verification with required=false: a segment the speaker engine cannot embed (one word,
    under Resemblyzer's 0.5 s of speech) is reported as speaker_verify_result success:false,
    then its text comes as usual (the seed: only required=true + failed verification skips
    ASR). The seed's streaming client prints the result."""
    go = pcm16(CLIP_GO)[: int(0.72 * 16000) * 2]  # "go" of "go forward ten meters"
    async with websockets.connect(ws_url(server)) as ws:
        await ws.send(command("speaker_list"))
        if not any(s["user_id"] == "spk1" for s in (await recv_json(ws))["speakers"]):
            assert (await register(ws, "spk1", SPK1_ENROLL))[-1]["success"] is True
        await ws.send(command("speaker_verify_enable", user_id="spk1", required=False))
        assert (await recv_json(ws))["required"] is False
        client, printed = load_seed_client("seed_stream_client")
        recorded = _Recorded(ws)
        client.websockets = _SharedConnection(recorded)
        listener = asyncio.create_task(client.asr_client(ws_url(server)))
        await send_realtime(ws, silence(0.3) + go + silence(1.2), interval=0.005)
        for _ in range(600):  # bounded: 30 s
            if "最终结果" in printed or any(m["type"] == "error" for m in recorded.seen):
                break
            await asyncio.sleep(0.05)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    kinds = [m.get("event") or m["type"] for m in recorded.seen]
    assert kinds == ["speech_start", "speech_end", "speaker_verify_result", "result"], recorded.seen
    verdict = recorded.seen[2]
    assert verdict["success"] is False and verdict["score"] == 0.0 and verdict["user_id"] == "spk1"
    assert printed[1:] == ["语音开始", printed[2], f"识别结果: {recorded.seen[3]['text']}", "最终结果"]
    from asrhub.testing import normalize_english

    assert normalize_english(recorded.seen[3]["text"]).split()[0] == "go", recorded.seen[3]


async def test_the_seeds_connection_timeout_is_the_default():
    """连接超时 60 秒 / Ping 间隔 20 秒: a ping after 20 s without a message, closed after
    60 s without anything from the client."""
    from asrhub_plugins.vad_stream.settings import VadStreamSettings

    settings = VadStreamSettings()
    assert settings.heartbeat_s == 20 and settings.heartbeat_s + settings.heartbeat_timeout_s == 60


async def test_a_silent_client_is_closed_after_the_timeout_not_after_half_a_ping(tmp_path):
    """The seed's rule at a small scale (ping after 1 s, closed 2 s later): a client that
    answers no ping stays connected past aiohttp's own rule (half a ping interval), and is
    closed once it was silent for the whole timeout. One that answers pings stays."""
    hub = hub_for(tmp_path, heartbeat_s=1.0, heartbeat_timeout_s=2.0)
    async with running_server(hub) as srv, aiohttp.ClientSession() as http:
        silent = await http.ws_connect(ws_url(srv), autoping=False, heartbeat=None)
        async with websockets.connect(ws_url(srv)) as polite:  # answers pings, like browsers
            first = await silent.receive(timeout=5)
            assert first.type == aiohttp.WSMsgType.PING  # after 1 s without a message
            pinged = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):  # aiohttp's own rule would close at +0.5 s
                await silent.receive(timeout=1.0)
            closed = await silent.receive(timeout=10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                   aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR), closed
            assert time.monotonic() - pinged >= 1.0
            await polite.send(command("ping"))  # silent for as long, but it answered the pings
            assert await recv_json(polite, 5) == {"type": "pong"}


# ---------------------------------------------------------------------------- hardening (issue 18)


async def test_no_number_sample_rates_and_lone_surrogates_leave_the_connection_usable(server):
    """batch_start with sample_rate NaN/Infinity/1e400 is code 1 with a clean message; a lone
    surrogate in a command or a user_id is refused with the seed's code and the outbox keeps
    working (pings are answered); the seed's client still prints the errors."""
    async with websockets.connect(ws_url(server)) as ws:
        for rate in ("NaN", "Infinity", "1e400"):
            await ws.send('{"command": "batch_start", "sample_rate": %s}' % rate)  # noqa: UP031
            error = await recv_json(ws)
            assert error["type"] == "error" and error["code"] == 1, error
            assert "Error" not in error["message"] and "float" not in error["message"], error
        for text, code in (('{"command": "\\ud800"}', 3),
                           ('{"command": "speaker_register_start", "user_id": "\\udc00x"}', 10),
                           ('{"command": "speaker_verify_enable", "user_id": "../x"}', 15)):
            await ws.send(text)
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", code), error
            await ws.send(command("ping"))
            assert await recv_json(ws) == {"type": "pong"}


async def test_check_config_refuses_what_serve_refuses(tmp_path, capsys):
    """vad_stream's cross-field checks (an engine the settings need) run in check-config (the
    CLI's own entry point, in process), exactly as serve runs them when it builds the hub."""
    from asrhub.cli import main
    from asrhub.config import ConfigError

    config = tmp_path / "asrhub.toml"

    def check(text: str) -> int:
        config.write_text(text, encoding="utf-8")
        return main(["check-config", "--config", str(config)])

    assert check("[protocols.vad_stream]\nns_enabled = true\n") == 2
    assert "ns_enabled needs a noise suppressor" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="ns_enabled"):  # what serve builds: the same hub
        hub_for(tmp_path / "state", ns_enabled=True)
    assert check("[protocols.vad_stream]\nns_enabled = true\nns_engine = \"rnnoise\"\n") == 0
    assert check("[protocols.vad_stream]\nenabled = false\nns_enabled = true\n") == 0  # not served
    assert check("[protocols.vad_stream]\nasr_engine = \"nope\"\n") == 2


async def test_a_second_anonymous_client_cannot_replace_a_voiceprint(server):
    """Issue 18 #6 against a real server: without a token, another client registering the same
    id is refused (code 2) and the first voiceprint stays; odd ids are refused (code 10)."""
    async with websockets.connect(ws_url(server)) as first:
        seen = await register(first, "victim", SPK1_ENROLL)
        assert seen[-1]["type"] == "speaker_register_result", seen
        await first.send(command("speaker_list"))
        before = next(s for s in (await recv_json(first))["speakers"] if s["user_id"] == "victim")
    async with websockets.connect(ws_url(server)) as second:
        await second.send(command("speaker_register_start", user_id="victim"))
        refused = await recv_json(second)
        assert (refused["type"], refused["code"]) == ("error", 2) and "already registered" in refused["message"]
        for odd in ("../x", "x\u0000y", "<script>"):
            await second.send(command("speaker_register_start", user_id=odd))
            assert (await recv_json(second))["code"] == 10
        await second.send(command("speaker_list"))
        after = next(s for s in (await recv_json(second))["speakers"] if s["user_id"] == "victim")
    assert after == before


@pytest.mark.slow
async def test_shutdown_flushes_results_of_audio_already_received(tmp_path):
    """SIGTERM while a client is mid-sentence (no silence after it yet) and another is mid-batch:
    each gets the results of what it sent, then 1001."""
    hub = hub_for(tmp_path)
    srv_cm = running_server(hub, preload=True)
    srv = await srv_cm.__aenter__()
    stopped = False
    try:
        async with websockets.connect(ws_url(srv)) as live, websockets.connect(ws_url(srv)) as batch:
            await live.send(silence(0.3) + pcm16(CLIP_GO))  # the segment is still open
            assert (await recv_json(live))["event"] == "speech_start"
            await batch.send(command("batch_start"))
            assert (await recv_json(batch))["state"] == "receiving"
            await batch.send(pcm16(CLIP_NOT_ILL))
            await batch.send(command("ping"))  # everything before it has been taken in
            assert (await recv_until(batch, lambda m: m["type"] == "pong"))[-1] == {"type": "pong"}
            stopping = asyncio.create_task(srv_cm.__aexit__(None, None, None))
            stopped = True
            heard: dict[str, list[dict]] = {"live": [], "batch": []}
            codes: dict[str, int] = {}
            for name, ws in (("live", live), ("batch", batch)):
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        heard[name].append(await recv_json(ws, 60))
                codes[name] = closed.value.rcvd.code
            await asyncio.wait_for(stopping, 60)
    finally:
        if not stopped:
            await srv_cm.__aexit__(None, None, None)
    assert codes == {"live": 1001, "batch": 1001}
    kinds = [m.get("event") or m["type"] for m in heard["live"]]
    assert kinds == ["speech_end", "result"], heard["live"]
    assert wer(transcript(CLIP_GO), heard["live"][-1]["text"]) <= 0.25
    result = next(m for m in heard["batch"] if m["type"] == "batch_result")
    assert wer(transcript(CLIP_NOT_ILL), result["text"]) <= 0.35, result
