"""The PTT state machine driven with plain lists of messages (no socket).

Most tests use the shared fake engine (:class:`asrhub.testing.FakeASR`): it recognises
nothing, it turns every 0.5 s of audio into one numbered word and ends an "utterance" every
three words. That makes the session's own logic (answers, joins, reset, failures) exact to
check. Messages go through :class:`asrhub.testing.RecordingChannel`, which answers what a
session raises the way the protocol kit does. Recognition itself is checked with the real
Whisper engine at the end of this file and end to end in ``test_ptt_server.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from asrhub.executor import InferenceExecutor
from asrhub.protocol import CloseInfo
from asrhub.streaming import LiveRecognizer
from asrhub.testing import FakeASR, RecordingChannel
from asrhub_plugins.ptt import messages as m
from asrhub_plugins.ptt.session import PTTSession, State
from asrhub_plugins.ptt.settings import PTTSettings
from asrhub_plugins.ptt.stats import PTTStats


def audio(seconds: float) -> dict:
    pcm = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 300).astype("<i2")
    return {"type": "audio", "data": base64.b64encode(pcm.tobytes()).decode(), "timestamp": 1}


START = {"type": "control", "command": "start", "timestamp": 1}
STOP = {"type": "control", "command": "stop", "timestamp": 1}
RESET = {"type": "control", "command": "reset"}


class Harness:
    def __init__(self, engine=None, vad=None, **settings) -> None:
        self.engine = engine or FakeASR()
        self.streams = getattr(self.engine, "streams", [])
        self.executor = InferenceExecutor(workers=1)
        self.stats = PTTStats()
        self.channel = RecordingChannel(m.error_message, codes=m.CODES, protocol="ptt")
        self.sent = self.channel.sent
        self.latencies: list[float] = []
        self.session = PTTSession(self.channel, LiveRecognizer.for_engines(self.executor, self.engine, vad),
                                  PTTSettings(**{"idle_timeout_s": 0, **settings}), stats=self.stats,
                                  observe_final=self.latencies.append)

    async def run(self, *messages) -> None:
        for message in messages:
            await self.channel.deliver(self.session, message if isinstance(message, str | bytes)
                                       else json.dumps(message))

    async def next_message(self, after: int, timeout: float = 5.0) -> dict:
        await self.channel.wait_for(lambda sent: len(sent) > after, timeout)
        return self.sent[after]

    def kinds(self) -> list[tuple]:
        return [(s["type"], s.get("mode") or s.get("code")) for s in self.sent]

    async def close(self) -> None:
        await self.session.on_close(CloseInfo("client closed"))
        await self.executor.shutdown(2)


@pytest.fixture
async def harness():
    made: list[Harness] = []

    def make(*args, **kwargs) -> Harness:
        made.append(Harness(*args, **kwargs))
        return made[-1]

    yield make
    for h in made:
        await h.close()


async def test_round_with_partials_then_final_joining_utterances(harness):
    h = harness()
    await h.run(START)
    assert h.sent == [] and h.session.state is State.RECORDING  # start has no reply
    for i in range(8):  # 4 s = 8 words = utterances "w1 w2 w3", "w4 w5 w6", then "w7 w8"
        await h.run(audio(0.5))
        partial = await h.next_message(i)  # every audio message is answered by a result
        assert partial["type"] == "result" and partial["mode"] == "partial"
        assert partial["text"] == " ".join(f"w{n}" for n in range(1, i + 2))
    await h.run(STOP)
    final = h.sent[-1]
    assert final["mode"] == "final" and final["text"] == "w1 w2 w3 w4 w5 w6 w7 w8"
    assert final["confidence"] == pytest.approx(0.8)
    assert final["processing_time_ms"] >= 0
    assert h.session.state is State.IDLE
    assert h.session.audio_seconds == pytest.approx(4.0)
    assert h.stats.utterances_total == 1 and h.stats.utterances_active == 0


async def test_burst_of_audio_is_answered_and_final_has_everything(harness):
    h = harness()
    await h.run(START, *[audio(0.25) for _ in range(10)])  # 2.5 s sent without waiting
    first = await h.next_message(0)
    assert first["mode"] == "partial"
    await h.run(STOP)
    assert h.sent[-1] == h.sent[-1] | {"mode": "final", "text": "w1 w2 w3 w4 w5"}
    assert all(s["type"] == "result" for s in h.sent)


async def test_audio_without_new_words_is_still_answered_and_rate_limited(harness):
    h = harness(partial_interval_s=0.3)
    await h.run(START, audio(0.1))
    assert (await h.next_message(0)) | {"timestamp": 0} == {
        "type": "result", "mode": "partial", "text": "", "timestamp": 0, "confidence": 0.0,
        "processing_time_ms": h.sent[0]["processing_time_ms"]}
    sent_at = time.monotonic()
    await h.run(audio(0.1))  # same (empty) text: answered, but not before partial_interval_s
    await h.next_message(1)
    assert time.monotonic() - sent_at > 0.2
    await h.run(STOP)
    assert h.kinds() == [("result", "partial"), ("result", "partial"), ("result", "final")]


async def test_several_rounds_on_one_session(harness):
    h = harness()
    for seconds in (1.0, 1.5, 0.5):
        await h.run(START, audio(seconds), STOP)
        words = int(seconds / 0.5)
        assert h.sent[-1]["mode"] == "final"
        assert h.sent[-1]["text"] == " ".join(f"w{n}" for n in range(1, words + 1))
    assert len(h.streams) == 3  # a fresh engine stream per round
    assert h.session.utterances == 3 and h.stats.utterances_total == 3


async def test_reset_drops_the_utterance_so_far(harness):
    h = harness()
    await h.run(START, audio(1.0))
    await h.next_message(0)
    await h.run(RESET)
    assert h.session.state is State.RECORDING and h.streams[0].reset_calls == 1
    count = len(h.sent)
    await h.run(audio(0.5))
    assert (await h.next_message(count))["text"] == "w1"  # nothing from before the reset
    await h.run(STOP)
    assert h.sent[-1]["mode"] == "final" and h.sent[-1]["text"] == "w1"
    await h.run(RESET)  # idle: nothing to drop, no reply
    assert h.sent[-1]["mode"] == "final"


@pytest.mark.parametrize("message, code, fragment", [
    ("{oops", 400, "not valid JSON"),
    ('"just a string"', 400, "JSON object"),
    ({"type": "video"}, 400, "unknown message type"),
    ({"type": "control", "command": "pause"}, 400, "unknown command"),
    ({"type": "audio", "data": "!!!not base64"}, 400, "base64"),
    ({"type": "audio", "data": base64.b64encode(b"\x01\x02\x03").decode()}, 400, "even number"),
])
async def test_bad_input_while_recording_is_refused_and_the_round_goes_on(harness, message, code, fragment):
    h = harness()
    await h.run(START, message)
    assert h.sent[-1]["type"] == "error" and h.sent[-1]["code"] == code
    assert fragment in h.sent[-1]["message"]
    assert h.session.state is State.RECORDING
    await h.run(audio(0.5), STOP)
    assert h.sent[-1]["mode"] == "final" and h.sent[-1]["text"] == "w1"
    assert h.channel.errors == [code]


async def test_wrong_state_is_409(harness):
    h = harness()
    await h.run(audio(0.5))
    await h.run(STOP)
    await h.run(START, START)
    assert [(s["type"], s["code"]) for s in h.sent] == [("error", 409)] * 3
    assert "start" in h.sent[0]["message"]
    assert h.session.state is State.RECORDING  # the second start changed nothing
    await h.run(audio(0.5), STOP)
    assert h.sent[-1]["text"] == "w1"


async def test_engine_failure_is_500_then_a_new_round_works(harness):
    h = harness(FakeASR(fail_from_call=2))  # the first stream fails from its second accept
    await h.run(START, audio(0.5))
    await h.next_message(0)
    await h.run(audio(0.5))
    error = await h.next_message(1)
    assert error["type"] == "error" and error["code"] == 500 and "engine exploded" in error["message"]
    assert h.session.state is State.IDLE
    await h.run(audio(0.5))
    assert h.sent[-1]["code"] == 409  # the utterance was abandoned
    assert h.channel.errors == [500, 409] and not h.channel.closed  # the connection lives on
    h.engine.stream_options = {}  # the next stream works
    await h.run(START, audio(1.0), STOP)
    assert h.sent[-1]["mode"] == "final" and h.sent[-1]["text"] == "w1 w2"


async def test_partial_results_off_sends_only_finals(harness):
    h = harness(partial_results=False)
    await h.run(START, audio(1.0))
    await asyncio.sleep(0.2)
    await h.run(audio(1.0), STOP)
    assert h.kinds() == [("result", "final")]
    assert h.sent[0]["text"] == "w1 w2 w3 w4"


async def test_backlog_over_the_limit_is_429_and_dropped(harness):
    h = harness(FakeASR(delay_s=0.3), max_backlog_s=1.0)
    await h.run(START, audio(0.75), audio(0.75), audio(0.75))
    codes = [s.get("code") for s in h.sent if s["type"] == "error"]
    assert 429 in codes
    await h.run(STOP)
    assert h.sent[-1]["mode"] == "final"
    assert h.session.audio_seconds < 2.25  # the refused audio was not counted


async def test_close_while_recording_abandons_quietly(harness):
    h = harness()
    await h.run(START, audio(0.5))
    await h.session.on_close(CloseInfo("client closed"))
    await h.run(STOP)  # ignored once closed
    assert h.session.state is State.CLOSED
    assert all(s["mode"] == "partial" for s in h.sent)
    assert h.stats.utterances_active == 0


async def test_shutdown_while_recording_sends_the_final_of_what_was_received(harness):
    h = harness()
    await h.run(START, audio(1.0))
    await h.session.on_close(CloseInfo("server shutdown", shutdown=True))
    assert h.sent[-1]["mode"] == "final" and h.sent[-1]["text"] == "w1 w2"
    assert h.session.state is State.CLOSED and h.latencies


async def test_start_opens_a_stream_with_the_configured_language(harness):
    h = harness(language="en")
    await h.run(START)
    assert h.streams[0].language == "en" and h.streams[0].vad is None


@pytest.mark.parametrize("message, fragment", [
    ('{"type": "control", "command": "start", "timestamp": NaN}', "not valid JSON"),
    ('{"type": "control", "command": "start", "timestamp": Infinity}', "not valid JSON"),
    ('{"type": "control", "command": "start", "timestamp": -Infinity}', "not valid JSON"),
    ('{"type": "control", "command": "start", "timestamp": ' + "9" * 60 + "}", "not valid JSON"),
    ('{"type": "control", "command": "start", "timestamp": 1e300}', "out of range"),
    ('{"type": "control", "command": "start", "timestamp": "now"}', "must be an integer"),
    ('{"type": "control", "command": "start", "timestamp": true}', "must be an integer"),
    ('{"type": "control", "command": ["start"]}', "unknown command"),
    ('{"type": "control", "command": 7}', "unknown command"),
    ('{"type": ["audio"]}', "must be a string"),
    ('{"type": "audio", "data": 12}', "needs \"data\""),
    ("[" * 5000, "not valid JSON"),
    ("\ud800", "not valid JSON"),
])
async def test_bad_values_are_400_and_the_connection_goes_on(harness, message, fragment):
    h = harness()
    await h.run(message)
    assert h.kinds() == [("error", 400)] and fragment in h.sent[0]["message"], h.sent
    await h.run(START, audio(0.5), STOP)
    assert h.sent[-1]["mode"] == "final" and h.sent[-1]["text"] == "w1"
    assert not h.channel.closed


async def test_binary_frames_are_400(harness):
    h = harness()
    await h.run(b"\x00\x01")
    assert h.kinds() == [("error", 400)] and "binary" in h.sent[0]["message"]


async def test_idle_connection_gets_408_then_is_closed(harness):
    h = harness(idle_timeout_s=0.3)
    await h.session.on_open()
    assert h.sent[0]["type"] == "status" and h.sent[0]["code"] == 200
    await asyncio.sleep(0.2)
    await h.run(STOP)  # a message restarts the clock
    assert h.kinds()[-1] == ("error", 409)
    opened = time.monotonic()
    await h.channel.wait_for(lambda sent: sent[-1].get("code") == 408)
    assert time.monotonic() - opened > 0.2
    assert h.channel.closed_with == (1000, "idle timeout")


# ---------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def whisper_engines():
    """Real Whisper tiny.en and the Silero VAD, loaded once."""
    from asrhub.testing import make_hub

    hub = make_hub({"engines": {"asr": "whisper", "vad": "silero",
                                "whisper": {"model": "tiny.en", "language": "en"}}}, only=["ptt"])
    yield hub.engine_sync("asr"), hub.engine_sync("vad")
    hub.unload_engines()


@pytest.mark.models
async def test_real_engine_through_plain_messages(harness, whisper_engines):
    import soundfile as sf

    from asrhub.testing import manifest, testdata_dir, wer

    name = "en/pocketsphinx_librivox_ss01_0890.wav"
    pcm, _ = sf.read(testdata_dir() / name, dtype="int16")
    chunks = [pcm[i:i + 8000] for i in range(0, len(pcm), 8000)]  # 0.5 s messages
    h = harness(*whisper_engines, language="en")
    await h.run(START, *[{"type": "audio", "data": base64.b64encode(c.tobytes()).decode()}
                         for c in chunks], STOP)
    assert h.sent[-1]["mode"] == "final"
    assert all(s["type"] == "result" for s in h.sent)
    assert wer(manifest()[name]["transcript"], h.sent[-1]["text"]) <= 0.25, h.sent[-1]["text"]
