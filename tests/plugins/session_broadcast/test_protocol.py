"""End to end: a real server on loopback, the seed's own Python clients, real models
(Silero VAD, Whisper tiny.en, Resemblyzer) on real recordings."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
import websockets

from asrhub.engine import Voiceprint
from asrhub.testing import make_hub, running_server, wer
from asrhub.testing import testdata_dir as data_dir
from asrhub_plugins.session_broadcast.handler import REGISTRY_KEY
from asrhub_plugins.session_broadcast.session import SessionRegistry

from .conftest import load_doc_client, quiet, received_results, write_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROTOCOL = "session_broadcast"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    hub = make_hub({"server": {"state_dir": str(state)},
                    "engines": {"whisper": {"model": "tiny.en"}}}, only=[PROTOCOL])
    async with running_server(hub) as srv:
        # load every engine once, before the timed parts of the tests
        for engine in (hub.vad(), hub.asr(), hub.speaker(), hub.voiceprints()):
            await engine
        yield srv


def ws_url(server, session_id: str, query: str = "") -> str:
    port = server.ports[PROTOCOL]
    return f"ws://127.0.0.1:{port}/ws/asr/{session_id}" + (f"?{query}" if query else "")


def registry(server) -> SessionRegistry:
    for runner in server.runners:
        if REGISTRY_KEY in runner.app:
            return runner.app[REGISTRY_KEY]
    raise AssertionError("no session_broadcast listener")


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def doc_sender(server, session_id: str, audio_file: Path):
    return load_doc_client(
        "doc_sender", SESSION_ID=session_id, AUDIO_FILE=str(audio_file),
        SERVER_URI=ws_url(server, "{session_id}", "mode=sender"))


def doc_receiver(server, session_id: str):
    return load_doc_client("doc_receiver", SESSION_ID=session_id,
                           SERVER_URI=ws_url(server, "{session_id}", "mode=receiver"))


def receivers_of(server, session_id: str) -> int:
    session = registry(server).sessions.get(session_id)
    return len(session.receivers) if session is not None else 0


async def broadcast(server, audio_file: Path, receivers: int = 1) -> tuple[list[list[dict]], list[str]]:
    """The seed's sender streams ``audio_file`` to ``receivers`` seed receivers; returns what
    each receiver got and what the sender printed."""
    session_id = str(uuid.uuid4())
    clients = [doc_receiver(server, session_id) for _ in range(receivers)]
    tasks = [asyncio.create_task(module.receive_results()) for module, _ in clients]
    await until(lambda: receivers_of(server, session_id) == receivers)
    sender, said = doc_sender(server, session_id, audio_file)
    await asyncio.wait_for(sender.send_audio(), 60)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert not [line for line in said if line.startswith(("发生错误", "连接已关闭"))], said
    assert [line for line in said if line.startswith("收到服务器最终响应: ")], said
    return [received_results(printed) for _, printed in clients], said


# ----------------------------------------------------------------------------- the seed's clients


@pytest.mark.slow
async def test_seed_sender_with_ten_seed_receivers(server, recordings):
    session_id = str(uuid.uuid4())
    receivers = [doc_receiver(server, session_id) for _ in range(10)]
    tasks = [asyncio.create_task(module.receive_results()) for module, _ in receivers]
    # A receiver that stops reading (its client buffers one message, then TCP backs up).
    stalled = await websockets.connect(ws_url(server, session_id, "mode=receiver"), max_queue=1,
                                     close_timeout=1)
    await until(lambda: receivers_of(server, session_id) == 11)

    sender, sender_said = doc_sender(server, session_id, recordings["three"])
    sending = asyncio.create_task(sender.send_audio())
    # A receiver that joins once the first result is out gets the results from then on.
    first_printed = receivers[0][1]
    await until(lambda: received_results(first_printed), 60)
    late, late_said = doc_receiver(server, session_id)
    late_task = asyncio.create_task(late.receive_results())

    await asyncio.wait_for(sending, 60)
    await asyncio.wait_for(asyncio.gather(*tasks, late_task), 60)
    await stalled.close()

    results = [received_results(printed) for _, printed in receivers]
    # every receiver got the same results, in the same order, and was closed normally
    assert all(r == results[0] for r in results)
    assert all(printed[-1] == "连接已关闭: 1000 session ended" for _, printed in receivers)
    texts = [r["asr"] for r in results[0]]
    assert len(texts) == 3, texts
    for text, reference in zip(texts, recordings["three_texts"], strict=True):
        assert wer(reference, text) < 0.35, (reference, text)
    for result in results[0]:
        assert set(result) == {"asr", "spk"}
        assert set(result["spk"]) == {"speaker_id", "speaker_name", "score"}
    # The recording ends 0.3 s after the last sentence, before the VAD can call its end: the
    # last result was made after the sender's "close" and still reached every receiver.
    late_results = received_results(late_said)
    assert late_results and late_results == results[0][-len(late_results):]
    assert len(late_results) < 3
    # The sender ran to the end without an error; the one message it waits for after "close"
    # is the oldest one it had not read: the first result (it never reads while sending).
    assert not [line for line in sender_said if line.startswith(("发生错误", "连接已关闭"))]
    final = [line for line in sender_said if line.startswith("收到服务器最终响应: ")]
    assert len(final) == 1
    assert json.loads(final[0].split(": ", 1)[1]) == results[0][0]
    await until(lambda: session_id not in registry(server).sessions)


async def test_enrolled_speaker_is_identified(server, recordings):
    hub = server.hub
    engine, store = await hub.speaker(), await hub.voiceprints()
    for vp in store.list():
        store.delete(vp.speaker_id)
    # enrolled from one recording, recognised in another (shared/testdata/SPEAKER_PAIRS.tsv)
    enroll = sf.read(str(data_dir() / "en/speechbrain_spk1_snt1.wav"), dtype="float32")[0]
    embedding = await hub.executor.run(engine.embed, enroll)
    store.put(Voiceprint("spk1-id", "Speaker One", embedding, time.time(), len(enroll) / 16000,
                         engine.name))
    try:
        (results,), _ = await broadcast(server, recordings["spk1_test"])
    finally:
        store.delete("spk1-id")
    assert len(results) == 1
    assert wer("AT THAT HIGH LEVEL THE AIR IS PURE", results[0]["asr"]) < 0.3
    spk = results[0]["spk"]
    assert spk["speaker_id"] == "spk1-id" and spk["speaker_name"] == "Speaker One"
    assert engine.default_threshold <= spk["score"] <= 1.0


@pytest.mark.slow
async def test_speaker_not_enrolled_is_unknown(server, recordings):
    hub = server.hub
    engine, store = await hub.speaker(), await hub.voiceprints()
    for vp in store.list():
        store.delete(vp.speaker_id)
    (results,), _ = await broadcast(server, recordings["spk1_test"])
    assert results[0]["spk"] == {"speaker_id": "unknown", "speaker_name": "unknown", "score": 0.0}

    # only another speaker enrolled: still unknown, with how close that voiceprint came
    other = sf.read(str(data_dir() / "en/speechbrain_spk2_snt1.wav"), dtype="float32")[0]
    embedding = await hub.executor.run(engine.embed, other)
    store.put(Voiceprint("spk2-id", "Speaker Two", embedding, time.time(), 3.0, engine.name))
    try:
        (results,), _ = await broadcast(server, recordings["spk1_test"])
    finally:
        store.delete("spk2-id")
    spk = results[0]["spk"]
    assert spk["speaker_id"] == "unknown" and spk["speaker_name"] == "unknown"
    assert 0.0 < spk["score"] < engine.default_threshold


async def test_seed_sender_gets_the_acknowledgement_when_nothing_was_said(server, tmp_path):
    silence = write_wav(tmp_path / "room.wav", [quiet(2.0, 11)])
    (results,), said = await broadcast(server, silence)
    assert results == []
    final = [line for line in said if line.startswith("收到服务器最终响应: ")]
    ack = json.loads(final[0].split(": ", 1)[1])
    assert ack["type"] == "closed" and ack["results"] == 0 and ack["audio_s"] == 2.0


# ----------------------------------------------------------------------------- refusals and errors


async def ws_messages(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> list[Any]:
    """Every message until the server closes; the close frame last as ("close", code, reason)."""
    out: list[Any] = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.CLOSE:
            out.append(("close", msg.data, msg.extra))
            return out
        else:  # CLOSED / CLOSING / ERROR: no close frame seen
            out.append(("close", ws.close_code, None))
            return out


def pcm(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="float32")[0]


async def test_second_sender_is_refused(server, recordings):
    session_id = str(uuid.uuid4())
    audio = pcm(recordings["short"])
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        await first.send_bytes(audio[:3200].tobytes())
        second = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        refused = await ws_messages(second)
        assert refused[0]["type"] == "error" and refused[0]["code"] == "sender_exists"
        assert refused[-1][:2] == ("close", 1008)
        assert "already has a sender" in refused[-1][2]
        # the first sender is unaffected
        await first.send_bytes(audio[3200:].tobytes())
        await first.send_str("close")
        messages = await ws_messages(first)
    assert len(messages) == 3
    assert wer(recordings["short_text"], messages[0]["asr"]) < 0.3
    assert messages[1] == {"type": "closed", "session_id": session_id, "results": 1,
                           "audio_s": round(len(audio) / 16000, 3), "reason": "sender sent close"}
    assert messages[2] == ("close", 1000, "session closed")


async def test_refusal_reason_with_a_long_chinese_session_id_stays_valid_utf8(server):
    session_id = "会议" * 60  # 120 characters, 360 bytes of UTF-8
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        second = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        refused = await ws_messages(second)
        assert refused[0]["message"].startswith(f"session '{session_id}' already has a sender")
        code, reason = refused[-1][1:]
        assert code == 1008 and reason.startswith("session '会议") and len(reason.encode()) <= 123
        await first.send_str("close")
        assert (await ws_messages(first))[0]["type"] == "closed"


@pytest.mark.parametrize("query", ["", "mode=", "mode=listener", "role=sender"])
async def test_missing_or_invalid_mode(server, query):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(server, "abc", query))
        messages = await ws_messages(ws)
    assert messages[0]["type"] == "error" and messages[0]["code"] == "invalid_mode"
    assert "mode=sender" in messages[0]["message"]
    assert messages[-1][:2] == ("close", 1008)


@pytest.mark.parametrize("path", ["/ws/asr/?mode=sender", "/ws/asr?mode=receiver",
                                  "/ws/asr/%20?mode=sender"])
async def test_missing_session_id(server, path):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{server.ports[PROTOCOL]}{path}")
        messages = await ws_messages(ws)
    assert messages[0]["code"] == "invalid_session_id"
    assert messages[-1][:2] == ("close", 1008)


async def test_bad_audio_is_reported_and_the_stream_goes_on(server, recordings):
    session_id = str(uuid.uuid4())
    audio = pcm(recordings["short"])
    async with aiohttp.ClientSession() as http:
        receiver = await http.ws_connect(ws_url(server, session_id, "mode=receiver"))
        await until(lambda: receivers_of(server, session_id) == 1)
        sender = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        await sender.send_str("hello")  # text where audio is expected
        await sender.send_bytes(b"\x00\x00\x80")  # not whole float32 samples
        await sender.send_bytes(np.array([0.1, np.nan], dtype="<f4").tobytes())
        await sender.send_bytes((audio[:1600] * 32767).astype("<i2").tobytes())  # int16, not float32
        errors = [await sender.receive_json(timeout=5) for _ in range(4)]
        await receiver.send_str("hi")  # receivers do not send
        assert (await receiver.receive_json(timeout=5))["code"] == "receiver_sent_data"
        for begin in range(0, len(audio), 128):  # an AudioWorklet's 128-sample frames
            await sender.send_bytes(audio[begin:begin + 128].tobytes())
        await sender.send_str("close")
        sent = await ws_messages(sender)
        heard = await ws_messages(receiver)
    assert [e["code"] for e in errors] == ["unexpected_text", "invalid_audio", "invalid_audio",
                                          "invalid_audio"]
    assert all(e["type"] == "error" and e["message"] for e in errors)
    assert "close" in errors[0]["message"] and "multiple of 4" in errors[1]["message"]
    assert "NaN" in errors[2]["message"]
    assert "16-bit integers" in errors[2]["message"] and "16-bit integers" in errors[3]["message"]
    assert len(heard) == 2 and heard[-1] == ("close", 1000, "session ended")
    assert wer(recordings["short_text"], heard[0]["asr"]) < 0.3
    assert sent[0] == heard[0] and sent[1]["type"] == "closed" and sent[-1][1] == 1000
    errors_counted = server.hub.counters[PROTOCOL].errors
    assert errors_counted["invalid_audio"] >= 3 and errors_counted["unexpected_text"] >= 1


async def test_sender_that_just_disconnects_still_reaches_receivers(server, recordings):
    """A browser tab closed mid-session sends no "close": the receivers get the rest anyway,
    and the session id is free again afterwards."""
    session_id = str(uuid.uuid4())
    audio = pcm(recordings["short"])
    async with aiohttp.ClientSession() as http:
        receiver = await http.ws_connect(ws_url(server, session_id, "mode=receiver"))
        await until(lambda: receivers_of(server, session_id) == 1)
        sender = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        await sender.send_bytes(audio.tobytes())
        await sender.close()
        heard = await ws_messages(receiver)
        assert len(heard) == 2 and wer(recordings["short_text"], heard[0]["asr"]) < 0.3
        assert heard[1] == ("close", 1000, "session ended")
        await until(lambda: session_id not in registry(server).sessions)
        again = await http.ws_connect(ws_url(server, session_id, "mode=sender"))
        await again.send_str("close")
        assert (await ws_messages(again))[0]["type"] == "closed"


async def test_shutdown_during_a_session_flushes_then_closes_everybody_with_1001(recordings):
    """SIGTERM mid-session: the audio already received is still recognised and broadcast (the
    first sentence, and the second one, cut where the audio stops), then everybody gets 1001."""
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {PROTOCOL: {"identify_speakers": False}}}, only=[PROTOCOL])
    audio = pcm(recordings["three"])
    half = audio[:len(audio) // 2]
    async with running_server(hub) as srv, aiohttp.ClientSession() as http:
        waiting = await http.ws_connect(ws_url(srv, "no-sender-yet", "mode=receiver"))
        receiver = await http.ws_connect(ws_url(srv, "live", "mode=receiver"))
        await until(lambda: receivers_of(srv, "live") == 1)
        sender = await http.ws_connect(ws_url(srv, "live", "mode=sender"))
        await sender.send_bytes(half.tobytes())
        sessions = registry(srv)
        await until(lambda: sessions.sessions["live"].audio_seconds == pytest.approx(len(half) / 16000))
        stopping = asyncio.create_task(srv.stop())
        heard = await ws_messages(receiver)
        sent = await ws_messages(sender)
        assert (await ws_messages(waiting))[-1][:2] == ("close", 1001)
        await asyncio.wait_for(stopping, 10)  # nobody waits for a sender that never came
        assert sessions.sessions == {}
    assert heard[-1][:2] == ("close", 1001) and sent[-1][:2] == ("close", 1001)
    results = [m for m in heard[:-1] if "asr" in m]
    assert results, heard
    assert wer(recordings["three_texts"][0], results[0]["asr"]) < 0.35, results
    assert [m for m in sent if isinstance(m, dict) and "asr" in m] == results
    assert hub.counters[PROTOCOL].connections_open == 0


async def test_receivers_of_sessions_without_a_sender_do_not_lock_senders_out(recordings):
    """Issue 18: receiver-only connections with distinct ids are not sessions; a real sender
    still gets its session when they exceed max_sessions."""
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {PROTOCOL: {"identify_speakers": False, "max_sessions": 2,
                                             "max_connections_per_peer": 0}}}, only=[PROTOCOL])
    audio = pcm(recordings["short"])
    async with running_server(hub) as srv, aiohttp.ClientSession() as http:
        squatters = [await http.ws_connect(ws_url(srv, f"squat-{i}", "mode=receiver"))
                     for i in range(10)]
        await until(lambda: len(registry(srv).sessions) == 10)
        sender = await http.ws_connect(ws_url(srv, "real", "mode=sender"))
        await sender.send_bytes(audio.tobytes())
        await sender.send_str("close")
        messages = await ws_messages(sender)
        assert wer(recordings["short_text"], messages[0]["asr"]) < 0.3, messages
        assert messages[1]["type"] == "closed" and messages[-1][:2] == ("close", 1000)
        # max_sessions still bounds sessions with a sender
        live = [await http.ws_connect(ws_url(srv, f"live-{i}", "mode=sender")) for i in range(2)]
        refused = await ws_messages(await http.ws_connect(ws_url(srv, "one-too-many", "mode=sender")))
        assert refused[0]["code"] == "too_many_sessions" and refused[-1][:2] == ("close", 1013)
        for ws in squatters + live:
            await ws.close()


async def test_a_sender_in_the_wrong_format_is_closed_with_a_reason(server, recordings):
    """int16 PCM instead of float32: an error per message, then one clear close (1007)."""
    audio = pcm(recordings["short"])
    int16 = (audio * 32767).astype("<i2").tobytes()
    async with aiohttp.ClientSession() as http:
        sender = await http.ws_connect(ws_url(server, str(uuid.uuid4()), "mode=sender"))
        for begin in range(0, len(int16), 4096):  # 30 messages
            await sender.send_bytes(int16[begin:begin + 4096])
        messages = await ws_messages(sender)
    errors, close = messages[:-1], messages[-1]
    assert len(errors) == 20 and {e["code"] for e in errors} == {"invalid_audio"}
    assert close[:2] == ("close", 1007)
    assert close[2] == '20 invalid messages (invalid_audio): expected float32 PCM, 16 kHz, mono, and text "close"'
    assert "16-bit integers" in errors[0]["message"]


async def test_a_sender_over_the_backlog_limit_is_told_and_closed_normally(recordings):
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {PROTOCOL: {"identify_speakers": False, "max_backlog_s": 2.0,
                                             "max_segment_s": 2.0}}}, only=[PROTOCOL])
    audio = pcm(recordings["short"])
    async with running_server(hub) as srv, aiohttp.ClientSession() as http:
        receiver = await http.ws_connect(ws_url(srv, "fast", "mode=receiver"))
        await until(lambda: receivers_of(srv, "fast") == 1)
        sender = await http.ws_connect(ws_url(srv, "fast", "mode=sender"))
        await sender.send_bytes(audio[:48000].tobytes())  # 3 s at once: more than 2 s waiting
        sent, heard = await asyncio.gather(ws_messages(sender), ws_messages(receiver))
    assert sent[0]["code"] == "backlog_full" and "2 s of audio" in sent[0]["message"]
    assert sent[1]["type"] == "closed" and sent[1]["reason"] == "backlog full"
    assert sent[2] == ("close", 1000, "session closed")
    assert heard == [("close", 1000, "session ended")]
