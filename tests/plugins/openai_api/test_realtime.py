"""Realtime transcription sessions (``/v1/realtime?intent=transcription``): the official SDK's
realtime client (GA events) with server VAD, and a plain websockets client speaking the beta
dialect (``OpenAI-Beta: realtime=v1``) with manual commits and G.711 audio."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest

from asrhub.testing import wer

from .conftest import MAX_WER, READER, TOKEN, joined, reference

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAMES = READER[:3]
CHUNK_S = 0.1


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.slow
async def test_sdk_realtime_transcription_server_vad(base_url) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=TOKEN, base_url=base_url, max_retries=0)
    audio = np.concatenate([joined(NAMES, gap_s=1.2, rate=24000), np.zeros(36000, np.float32)])
    events: list[Any] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        await conn.session.update(session={
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "whisper-1", "language": "en"},
                                "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                   "prefix_padding_ms": 300,
                                                   "silence_duration_ms": 500}}}})
        updated = await conn.recv()
        assert updated.type == "session.updated", updated
        assert updated.session.audio.input.transcription.language == "en"
        step = int(CHUNK_S * 24000)
        for start in range(0, len(audio), step):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm16(audio[start:start + step])).decode())
        await conn.input_audio_buffer.commit()
        committed: set[str] = set()
        completed: dict[str, str] = {}
        async with asyncio.timeout(240):
            while not committed or not committed <= set(completed) or len(completed) < len(NAMES):
                event = await conn.recv()
                events.append(event)
                assert event.type != "error", event
                if event.type == "input_audio_buffer.committed":
                    committed.add(event.item_id)
                elif event.type == "conversation.item.input_audio_transcription.completed":
                    completed[event.item_id] = event.transcript
    kinds = [e.type for e in events]
    assert kinds.count("input_audio_buffer.speech_started") >= len(NAMES)
    assert kinds.count("input_audio_buffer.speech_stopped") >= len(NAMES)
    assert "conversation.item.input_audio_transcription.delta" in kinds
    # Events of an item come in order: started, stopped, committed ... completed.
    first = next(e.item_id for e in events if e.type == "input_audio_buffer.speech_started")
    order = [e.type for e in events if getattr(e, "item_id", None) == first]
    assert order.index("input_audio_buffer.speech_stopped") < order.index(
        "conversation.item.input_audio_transcription.completed")
    # Deltas of an item add up to the start of its completed transcript (the final may still
    # rewrite a word of a partial: the completed transcript is the one that counts).
    for item_id, transcript in completed.items():
        deltas = "".join(e.delta for e in events if e.type.endswith("transcription.delta")
                         and e.item_id == item_id)
        if deltas:
            start = " ".join(transcript.split()[:len(deltas.split())])
            assert wer(start, deltas) <= 0.34, (deltas, transcript)
    ordered = [completed[e.item_id] for e in events if e.type == "input_audio_buffer.committed"]
    assert wer(reference(NAMES), " ".join(ordered)) <= MAX_WER, ordered


async def _raw(base_url: str, **headers: str) -> Any:
    from websockets.asyncio.client import connect

    url = base_url.replace("http://", "ws://") + "/realtime?intent=transcription"
    return await connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}",
                                                             **headers})


async def _next(ws: Any, *kinds: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] in kinds:
                return event


@pytest.mark.slow
async def test_beta_dialect_manual_commit_with_g711(base_url) -> None:
    import audioop as ref

    ws = await _raw(base_url, **{"OpenAI-Beta": "realtime=v1"})
    try:
        created = await _next(ws, "transcription_session.created")
        assert created["session"]["input_audio_format"] == "pcm16"
        await ws.send(json.dumps({"type": "transcription_session.update", "event_id": "ev1",
                                  "session": {"input_audio_format": "g711_ulaw",
                                              "input_audio_transcription": {"model": "whisper-1"},
                                              "turn_detection": None}}))
        updated = await _next(ws, "transcription_session.updated", "error")
        assert updated["type"] == "transcription_session.updated", updated
        assert updated["session"]["turn_detection"] is None
        # A commit of nothing is refused; the session goes on.
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "ev2"}))
        error = await _next(ws, "error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "ev2"
        # Unknown events and bad JSON are errors too, and the session still works after them.
        await ws.send(json.dumps({"type": "response.create"}))
        assert (await _next(ws, "error"))["error"]["code"] == "unknown_event_type"
        await ws.send("{not json")
        assert (await _next(ws, "error"))["error"]["code"] == "invalid_event"
        names = [READER[1]]
        ulaw = ref.lin2ulaw(pcm16(joined(names, rate=8000)), 2)
        for start in range(0, len(ulaw), 1600):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(ulaw[start:start + 1600]).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        committed = await _next(ws, "input_audio_buffer.committed")
        done = await _next(ws, "conversation.item.input_audio_transcription.completed")
        assert done["item_id"] == committed["item_id"]
        assert wer(reference(names), done["transcript"]) <= MAX_WER, done
        # Clearing drops what was appended: the next commit has nothing.
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(ulaw[:8000]).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await _next(ws, "input_audio_buffer.cleared")
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert (await _next(ws, "error"))["error"]["code"] == "input_audio_buffer_commit_empty"
    finally:
        await ws.close()


async def test_conversation_sessions_are_refused(base_url) -> None:
    import websockets
    from websockets.asyncio.client import connect

    url = base_url.replace("http://", "ws://") + "/realtime?model=gpt-realtime"
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        event = json.loads(await ws.recv())
        assert event["type"] == "error" and event["error"]["code"] == "unsupported_intent"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)


async def test_realtime_needs_the_token(base_url) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    url = base_url.replace("http://", "ws://") + "/realtime?intent=transcription"
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers={"Authorization": "Bearer sk-wrong"})
    assert info.value.response.status_code == 401


@pytest.mark.slow
async def test_shutdown_flushes_the_item_in_progress() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from asrhub.server import Server
    from asrhub.testing import make_hub

    from .conftest import hub_sections

    hub = make_hub(hub_sections(), only=["openai_api"])
    server = Server(hub)
    await server.start(preload=True)
    stopped = False
    try:
        url = f"ws://127.0.0.1:{server.ports['openai_api']}/v1/realtime?intent=transcription"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await _next(ws, "session.created")
            speech = joined([READER[0]], rate=24000)  # no silence after it: speech goes on
            for start in range(0, len(speech), 2400):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm16(speech[start:start + 2400])).decode()}))
            await _next(ws, "input_audio_buffer.speech_started")
            stopping = asyncio.ensure_future(server.stop())
            events = []
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(120):
                    while True:
                        events.append(json.loads(await ws.recv()))
            await stopping
            stopped = True
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        done = [e for e in events if e["type"].endswith("transcription.completed")]
        assert done and wer(reference([READER[0]]), done[-1]["transcript"]) <= MAX_WER, events
    finally:
        if not stopped:
            await server.stop()


@pytest.mark.slow
async def test_noise_reduction_uses_the_hubs_suppressor() -> None:
    from asrhub.testing import make_hub, running_server

    from .conftest import hub_sections

    sections = hub_sections()
    sections["engines"] = {**sections["engines"], "denoise": "rnnoise"}
    hub = make_hub(sections, only=["openai_api"])
    async with running_server(hub, preload=True) as srv:
        ws = await _raw(f"http://127.0.0.1:{srv.ports['openai_api']}/v1")
        try:
            await _next(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "transcription", "audio": {"input": {
                    "noise_reduction": {"type": "near_field"}, "turn_detection": None,
                    "transcription": {"model": "whisper-1", "language": "en"}}}}}))
            updated = await _next(ws, "session.updated")
            assert updated["session"]["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
            names = [READER[2]]
            rng = np.random.default_rng(3)
            speech = joined(names, rate=24000)
            noisy = speech + rng.normal(0, 0.01, len(speech)).astype(np.float32)
            data = pcm16(noisy)
            for start in range(0, len(data), 9600):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(data[start:start + 9600]).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            done = await _next(ws, "conversation.item.input_audio_transcription.completed", "error")
            assert done["type"].endswith("completed"), done
            assert wer(reference(names), done["transcript"]) <= MAX_WER, done
        finally:
            await ws.close()
        assert hub.loaded_engine("denoise") is not None
