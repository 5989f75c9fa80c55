"""The Wyoming listener in-process (make_hub + running_server), the ``wyoming`` package's own
client, real Whisper tiny.en and Silero VAD on real recordings: the request flow, every error
path, server shutdown mid-audio and speaker identification."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import pytest_asyncio
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info, SelectProgram
from wyoming.ping import Ping, Pong

from asrhub.engine import Voiceprint
from asrhub.testing import make_hub, running_server, wer

from .conftest import (
    GO,
    OTHER,
    READ_TIMEOUT,
    SHORT,
    RawClient,
    load,
    quiet,
    reference,
    to_pcm,
    transcribe,
    until,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
MAX_WER = 0.2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    hub = make_hub({"server": {"state_dir": str(state)},
                    "engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {"wyoming": {"identify_speakers": True}}}, only=["wyoming"])
    async with running_server(hub, preload=True) as srv:
        yield srv


def port_of(server) -> int:
    return server.ports["wyoming"]


async def answers(port: int, *events: Event) -> list[Event]:
    client = await RawClient.connect(port)
    try:
        for event in events:
            await client.send(event)
        return await client.answers()
    finally:
        client.close()


def error_of(events: list[Event]) -> Error:
    (event,) = [e for e in events if e.type == "error"]
    return Error.from_event(event)


async def test_describe_ping_and_unknown_events_on_one_connection(server):
    async with AsyncTcpClient("127.0.0.1", port_of(server)) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await asyncio.wait_for(client.read_event(), READ_TIMEOUT))
        await client.write_event(Event("no-such-event", {"x": 1}, b"\x00" * 10))
        await client.write_event(Ping(text="are you there").event())
        pong = await asyncio.wait_for(client.read_event(), READ_TIMEOUT)
        assert pong is not None and Pong.from_event(pong).text == "are you there"
        await client.write_event(Describe().event())
        again = await asyncio.wait_for(client.read_event(), READ_TIMEOUT)
        assert again is not None and Info.from_event(again) == info
    (program,) = info.asr
    assert program.name == "whisper" and program.installed and program.supports_transcript_streaming
    (model,) = program.models
    assert model.name == "tiny.en" and model.languages == ["en"] and model.installed


async def test_a_program_or_model_is_chosen_by_name(server):
    audio = np.concatenate([load(GO), quiet(0.5)])
    for name in ("tiny.en", "whisper"):
        result = await transcribe(port_of(server), to_pcm(audio), name=name)
        assert wer(reference(GO), result.text) <= MAX_WER, (name, result.text)
    # select-program picks the program for the connection
    async with AsyncTcpClient("127.0.0.1", port_of(server)) as client:
        await client.write_event(SelectProgram(name="whisper").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                            audio=to_pcm(audio)).event())
        await client.write_event(AudioStop().event())
        seen = []
        while (event := await asyncio.wait_for(client.read_event(), READ_TIMEOUT)) is not None:
            seen.append(event)
    (final,) = [Transcript.from_event(e) for e in seen if e.type == "transcript"]
    assert wer(reference(GO), final.text) <= MAX_WER
    # a name the hub does not serve: told so, and the connection ends
    for first in (SelectProgram(name="large-v3").event(), Transcribe(name="large-v3").event()):
        events = await answers(port_of(server), first)
        error = error_of(events)
        assert error.code == "unknown_model" and "tiny.en" in error.text


async def test_requests_the_hub_cannot_honour_end_with_an_error(server):
    port = port_of(server)
    start = AudioStart(rate=16000, width=2, channels=1).event()
    cases = [
        ([AudioStart(rate=16000, width=5, channels=1).event()], "unsupported_audio"),
        ([AudioStart(rate=100, width=2, channels=1).event()], "unsupported_audio"),
        ([Transcribe(language="de").event(), start], "engine_error"),  # tiny.en is English only
        ([start, start], "unexpected_event"),
        ([Transcribe().event(), AudioStop().event()], "audio_not_started"),
        ([AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0" * 160).event()],
         "audio_not_started"),
        ([Event("audio-start", {"rate": "fast", "width": 2, "channels": 1})], "bad_event"),
        ([Event("transcribe", {"language": ["en"]})], "bad_event"),
    ]
    for events, code in cases:
        said = await answers(port, *events)
        assert error_of(said).code == code, (events, said)
    errors = server.hub.counters["wyoming"].errors
    assert errors["unsupported_audio"] >= 2 and errors["audio_not_started"] >= 2


async def test_transcript_alone_when_the_client_asks_for_no_stream(server):
    audio = np.concatenate([load(SHORT), quiet(1.0), load(OTHER), quiet(0.5)])
    result = await transcribe(port_of(server), to_pcm(audio),
                              context={"transcript_streaming": False})
    assert result.types() == ["transcript"] and result.closed
    expected = reference(SHORT) + " " + reference(OTHER)
    assert wer(expected, result.text) <= MAX_WER
    assert Transcript.from_event(result.events[0]).language == "en"


async def test_enrolled_speaker_is_identified_in_the_transcript_context(server):
    from asrhub.testing import testdata_dir

    hub = server.hub
    engine, store = await hub.speaker(), await hub.voiceprints()
    import soundfile as sf

    enroll = sf.read(str(testdata_dir() / "en/speechbrain_spk1_snt1.wav"), dtype="float32")[0]
    embedding = await hub.executor.run(engine.embed, enroll)
    store.put(Voiceprint("spk1-id", "Speaker One", embedding, time.time(), len(enroll) / 16000,
                         engine.name))
    try:
        same = "en/speechbrain_spk1_snt3.wav"
        result = await transcribe(port_of(server), to_pcm(np.concatenate([load(same), quiet(0.5)])))
        other = "en/speechbrain_spk2_snt1.wav"
        stranger = await transcribe(port_of(server), to_pcm(np.concatenate([load(other), quiet(0.5)])))
    finally:
        store.delete("spk1-id")
    transcript = Transcript.from_event(result.of("transcript")[0])
    assert wer(reference(same), transcript.text) <= 0.3
    assert transcript.context is not None
    speaker = transcript.context["speaker"]
    assert speaker["id"] == "spk1-id" and speaker["name"] == "Speaker One"
    assert engine.default_threshold <= speaker["score"] <= 1.0
    assert Transcript.from_event(stranger.of("transcript")[0]).context == {"speaker": None}


async def test_shutdown_mid_audio_sends_the_transcript_of_what_arrived(tmp_path):
    hub = make_hub({"server": {"state_dir": str(tmp_path)},
                    "engines": {"whisper": {"model": "tiny.en"}}}, only=["wyoming"])
    async with running_server(hub, preload=True) as srv:
        client = AsyncTcpClient("127.0.0.1", srv.ports["wyoming"])
        await client.connect()
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        pcm = to_pcm(np.concatenate([load(OTHER), quiet(0.3)]))
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
        await until(lambda: hub.counters["wyoming"].connections_open == 1)
        await asyncio.sleep(0.2)  # let the chunk reach the session
        await srv.stop()  # no audio-stop: the server is shutting down
        seen = []
        while (event := await asyncio.wait_for(client.read_event(), READ_TIMEOUT)) is not None:
            seen.append(event)
        await client.disconnect()
    transcripts = [Transcript.from_event(e) for e in seen if e.type == "transcript"]
    assert len(transcripts) == 1
    assert wer(reference(OTHER), transcripts[0].text) <= MAX_WER


async def test_an_idle_connection_is_closed():
    hub = make_hub({"protocols": {"wyoming": {"idle_timeout_s": 0.3}}}, only=["wyoming"])
    async with running_server(hub) as srv:
        client = await RawClient.connect(srv.ports["wyoming"])
        said = await client.answers()
        client.close()
    assert error_of(said).code == "idle_timeout"


async def test_a_chunk_may_change_the_audio_format(server):
    audio = np.concatenate([load(SHORT), quiet(1.0), load(OTHER), quiet(0.5)])
    half = len(load(SHORT)) + 16000 // 2  # inside the pause
    async with AsyncTcpClient("127.0.0.1", port_of(server)) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                            audio=to_pcm(audio[:half])).event())
        await client.write_event(AudioChunk(rate=8000, width=2, channels=2,
                                            audio=to_pcm(audio[half:], 8000, 2, 2)).event())
        await client.write_event(AudioStop().event())
        seen = []
        while (event := await asyncio.wait_for(client.read_event(), READ_TIMEOUT)) is not None:
            seen.append(event)
    (final,) = [Transcript.from_event(e) for e in seen if e.type == "transcript"]
    assert wer(reference(SHORT) + " " + reference(OTHER), final.text) <= MAX_WER, final.text


async def test_backpressure_holds_audio_that_arrives_faster_than_it_is_recognised(tmp_path):
    # A backlog of at most 1 s: 11 s of audio sent at once is read as the recogniser keeps up.
    hub = make_hub({"server": {"state_dir": str(tmp_path)},
                    "engines": {"whisper": {"model": "tiny.en"}},
                    "protocols": {"wyoming": {"max_backlog_s": 1.0}}}, only=["wyoming"])
    async with running_server(hub, preload=True) as srv:
        audio = np.concatenate([load(SHORT), quiet(1.0), load(OTHER), quiet(1.0), load(GO),
                                quiet(0.5)])
        result = await transcribe(srv.ports["wyoming"], to_pcm(audio), chunk_frames=16000)
    expected = " ".join(reference(x) for x in (SHORT, OTHER, GO))
    assert result.closed and not result.of("error")
    assert wer(expected, result.text) <= MAX_WER, result.text
    assert [c.data["text"] for c in result.of("transcript-chunk")]  # utterances streamed
