"""The PTT state machine driven with plain lists of messages (no socket).

Most tests use :class:`CountingStream`, a stand-in for an engine stream that recognises
nothing: it turns every 0.5 s of audio into one numbered word and ends an "utterance" every
three words. That makes the session's own logic (answers, joins, reset, failures) exact to
check. Recognition itself is checked with the real Whisper engine at the end of this file and
end to end in ``test_ptt_server.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from asrhub.engine import Hypothesis
from asrhub.executor import InferenceExecutor
from asrhub_plugins.ptt.session import PTTSession, State
from asrhub_plugins.ptt.settings import PTTSettings
from asrhub_plugins.ptt.stats import PTTStats

WORD = 8000  # samples per counted word (0.5 s)


class CountingStream:
    def __init__(self, *, fail_on_call: int = 0, delay: float = 0.0) -> None:
        self.samples = 0
        self.utterance = 1
        self.words: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.delay = delay
        self.reset_calls = 0

    def accept(self, pcm):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.calls == self.fail_on_call:
            raise RuntimeError("engine exploded")
        out = []
        before = self.samples // WORD
        self.samples += len(pcm)
        for n in range(before + 1, self.samples // WORD + 1):
            self.words.append(f"w{n}")
            if len(self.words) == 3:
                out.append(self._hyp(True))
                self.words = []
                self.utterance += 1
        if self.words:
            out.append(self._hyp(False))
        return out

    def finish(self):
        out = [self._hyp(True)] if self.words else []
        self.words = []
        return out

    def reset(self):
        self.reset_calls += 1
        self.samples = 0
        self.words = []

    def _hyp(self, final: bool) -> Hypothesis:
        return Hypothesis(" ".join(self.words), final, self.utterance, 0.0, self.samples / 16000,
                          confidence=0.8)


def audio(seconds: float) -> dict:
    pcm = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 300).astype("<i2")
    return {"type": "audio", "data": base64.b64encode(pcm.tobytes()).decode(), "timestamp": 1}


START = {"type": "control", "command": "start", "timestamp": 1}
STOP = {"type": "control", "command": "stop", "timestamp": 1}
RESET = {"type": "control", "command": "reset"}


class Harness:
    def __init__(self, stream_factory=CountingStream, **settings) -> None:
        self.sent: list[dict] = []
        self.streams: list = []
        self.executor = InferenceExecutor(workers=1)
        self.stats = PTTStats()

        def open_stream():
            stream = stream_factory()
            self.streams.append(stream)
            return stream

        self.session = PTTSession(send=self.sent.append, open_stream=open_stream,
                                  executor=self.executor, settings=PTTSettings(**settings),
                                  stats=self.stats)

    async def run(self, *messages) -> None:
        for message in messages:
            await self.session.handle(message if isinstance(message, str) else json.dumps(message))

    async def next_message(self, after: int, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.sent) <= after:
            assert time.monotonic() < deadline, f"no message after {self.sent}"
            await asyncio.sleep(0.005)
        return self.sent[after]

    def kinds(self) -> list[tuple]:
        return [(s["type"], s.get("mode") or s.get("code")) for s in self.sent]

    async def close(self) -> None:
        await self.session.close()
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
    assert h.stats.errors[code] == 1


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
    calls = iter([2, 0])  # the first stream fails on its second accept, the next one never
    h = harness(lambda: CountingStream(fail_on_call=next(calls)))
    await h.run(START, audio(0.5))
    await h.next_message(0)
    await h.run(audio(0.5))
    error = await h.next_message(1)
    assert error["type"] == "error" and error["code"] == 500 and "engine exploded" in error["message"]
    assert h.session.state is State.IDLE
    await h.run(audio(0.5))
    assert h.sent[-1]["code"] == 409  # the utterance was abandoned
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
    h = harness(lambda: CountingStream(delay=0.3), max_backlog_s=1.0)
    await h.run(START, audio(0.75), audio(0.75), audio(0.75))
    codes = [s.get("code") for s in h.sent if s["type"] == "error"]
    assert 429 in codes
    await h.run(STOP)
    assert h.sent[-1]["mode"] == "final"
    assert h.session.audio_seconds < 2.25  # the refused audio was not counted


async def test_close_while_recording_abandons_quietly(harness):
    h = harness()
    await h.run(START, audio(0.5))
    await h.session.close()
    await h.run(STOP)  # ignored once closed
    assert h.session.state is State.CLOSED
    assert all(s["mode"] == "partial" for s in h.sent)
    assert h.stats.utterances_active == 0




# ---------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def whisper_streams():
    """A factory of real Whisper tiny.en streams (with the Silero VAD), loaded once."""
    from asrhub.testing import make_hub

    hub = make_hub({"engines": {"asr": "whisper", "vad": "silero",
                                "whisper": {"model": "tiny.en", "language": "en"}}}, only=["ptt"])
    asr, vad = hub.engine_sync("asr"), hub.engine_sync("vad")
    yield lambda: asr.open_stream(language="en", vad=vad.open_stream())
    hub.unload_engines()


async def test_real_engine_through_plain_messages(harness, whisper_streams):
    import soundfile as sf

    from asrhub.testing import manifest, testdata_dir, wer

    name = "en/pocketsphinx_librivox_ss01_0890.wav"
    pcm, _ = sf.read(testdata_dir() / name, dtype="int16")
    chunks = [pcm[i:i + 8000] for i in range(0, len(pcm), 8000)]  # 0.5 s messages
    h = harness(whisper_streams)
    await h.run(START, *[{"type": "audio", "data": base64.b64encode(c.tobytes()).decode()}
                         for c in chunks], STOP)
    assert h.sent[-1]["mode"] == "final"
    assert all(s["type"] == "result" for s in h.sent)
    assert wer(manifest()[name]["transcript"], h.sent[-1]["text"]) <= 0.25, h.sent[-1]["text"]
