"""asrhub.testing's shared fakes and asrhub.streaming's pump, on their own (no socket)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from asrhub.engine import ASREngine, ASRStream, EngineError, VADEngine, VADStream
from asrhub.executor import InferenceExecutor
from asrhub.protocol import ProtocolError
from asrhub.streaming import BacklogFull, LiveRecognizer, StreamPump
from asrhub.testing import (
    FakeASR,
    FakeASRStream,
    FakeVAD,
    FakeVADStream,
    RecordingChannel,
    make_hub,
)


def tone(seconds: float, level: float = 0.3) -> np.ndarray:
    return (np.sin(np.arange(int(seconds * 16000)) / 7) * level).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.float32)


def test_fakes_satisfy_the_engine_interfaces():
    assert isinstance(FakeASR(), ASREngine) and isinstance(FakeASRStream(), ASRStream)
    assert isinstance(FakeVAD(), VADEngine) and isinstance(FakeVADStream(), VADStream)


def test_fake_asr_stream_counts_words_and_cuts_utterances():
    stream = FakeASRStream()
    assert stream.accept(silence(0.25)) == []  # no whole word yet
    hyps = stream.accept(silence(0.25))
    assert [(h.text, h.is_final) for h in hyps] == [("w1", False)]
    hyps = stream.accept(silence(1.5))  # w2 w3 end utterance 1; w4 starts utterance 2
    assert [(h.text, h.is_final, h.utterance) for h in hyps] == [("w1 w2 w3", True, 1), ("w4", False, 2)]
    assert hyps[0].start == 0 and hyps[0].end == 1.5 and hyps[0].confidence == 0.8
    assert [(h.text, h.is_final) for h in stream.finish()] == [("w4", True)]
    assert stream.finish() == [] and stream.finished
    stream.reset()
    assert stream.accept(silence(0.5))[0].text == "w1" and stream.reset_calls == 1
    assert stream.accepted == [4000, 4000, 24000, 8000] and stream.calls == 4


def test_fake_asr_stream_ends_an_utterance_at_a_vad_end_and_fails_on_request():
    stream = FakeASRStream(utterance_words=0, vad=FakeVADStream())
    hyps = stream.accept(np.concatenate([tone(1.0), silence(0.5)]))
    assert [(h.text, h.is_final) for h in hyps] == [("w1 w2 w3", True)]  # the pause ended it
    broken = FakeASRStream(fail_from_call=2)
    broken.accept(silence(0.5))
    for _ in range(2):
        with pytest.raises(EngineError, match="engine exploded"):
            broken.accept(silence(0.5))


def test_fake_vad_regions_and_events():
    audio = np.concatenate([silence(1.0), tone(1.0), silence(1.0), tone(0.5)])
    assert FakeVAD().speech_regions(audio) == [(15872, 32256), (47616, len(audio))]
    stream = FakeVADStream()
    events = stream.accept(audio[:40000])
    assert [(e.kind, e.sample) for e in events] == [("start", 15872), ("end", 32256)]
    assert stream.accept(audio[40000:]) and stream.in_speech
    assert [e.kind for e in stream.finish()] == ["end"]


def test_fake_asr_transcribe():
    transcript = FakeASR(utterance_words=2).transcribe(silence(2.6))
    assert transcript.text == "w1 w2 w3 w4 w5"
    assert [s.text for s in transcript.segments] == ["w1 w2", "w3 w4", "w5"]


def test_make_hub_with_fake_engines():
    hub = make_hub(fake_engines=True, only=[])
    assert isinstance(hub.engine_sync("asr"), FakeASR) and isinstance(hub.engine_sync("vad"), FakeVAD)
    assert hub.engine_name("asr") == "fake"


def test_recording_channel_applies_the_envelope_and_fatal_close():
    channel = RecordingChannel(lambda err: {"kind": "oops", "code": err.code})
    channel.send_json({"a": 1})
    channel.send_error(ProtocolError(400, "bad"))
    channel.send_error(ProtocolError(503, "gone", fatal=True, close_code=1013))
    channel.send_json({"after": "close"})
    assert channel.sent == [{"a": 1}, {"kind": "oops", "code": 400}, {"kind": "oops", "code": 503}]
    assert channel.errors == [400, 503] and channel.closed_with == (1013, "gone") and channel.closed


@pytest.fixture
async def executor():
    ex = InferenceExecutor(workers=1)
    yield ex
    await ex.shutdown(2)


async def test_live_recognizer_tags_calls_and_the_pump_reports_every_batch(executor):
    engines = FakeASR()
    seen: list[list] = []

    async def on_hyps(hyps):
        seen.append([h.text for h in hyps])

    recognizer = LiveRecognizer.for_engines(executor, engines)
    assert recognizer.engine == "fake"
    pump = await recognizer.open(on_hyps, language="en", report_empty=True)
    assert engines.streams[0].language == "en" and pump.engine == "fake"
    pump.feed(silence(0.1))
    await pump.drain()
    pump.feed(silence(0.5))
    await pump.drain()
    assert seen == [[], ["w1"]]
    assert [h.text for h in await pump.finish()] == ["w1"]
    assert pump.audio_seconds == pytest.approx(0.6) and pump.last_call_seconds >= 0
    await pump.close()


async def test_pump_tells_on_error_at_once_and_refuses_more(executor):
    errors: list[BaseException] = []
    told = asyncio.Event()

    def on_error(exc):
        errors.append(exc)
        told.set()

    async def on_hyps(hyps):
        pass

    recognizer = LiveRecognizer.for_engines(executor, FakeASR(fail_from_call=1))
    pump = await recognizer.open(on_hyps, on_error=on_error, max_backlog_s=1.0)
    with pytest.raises(BacklogFull):
        pump.feed(silence(1.5))
    pump.feed(silence(0.5))
    await asyncio.wait_for(told.wait(), 5)
    assert isinstance(errors[0], EngineError) and pump.error is errors[0]
    with pytest.raises(EngineError):
        pump.feed(silence(0.5))
    with pytest.raises(EngineError):
        await pump.finish()
    await pump.close()


async def test_pump_min_chunk_batches_frames_until_flushed(executor):
    seen: list[int] = []
    engine = FakeASR()

    async def on_hyps(hyps):
        seen.append(len(hyps))

    pump = await LiveRecognizer.for_engines(executor, engine).open(on_hyps, min_chunk_s=0.5,
                                                                   report_empty=True)
    for _ in range(12):  # 1.2 s in 0.1 s frames
        pump.feed(silence(0.1))
    await pump.drain()  # hands over the 0.2 s left too
    stream = engine.streams[0]
    assert sum(stream.accepted) == 19200
    assert all(n >= 8000 for n in stream.accepted[:-1]), stream.accepted
    pump.feed(silence(0.1))
    await pump.reset()  # queued audio dropped, nothing hangs
    assert sum(stream.accepted) == 19200 and pump.backlog_seconds == 0
    await pump.close()


async def test_pump_finish_withdraws_the_partial_of_a_running_accept(executor):
    """finish() while an accept waits for its partial: the stream is told to withdraw it (the
    final should not wait for a partial), the accept returns, the final follows."""
    import threading

    class SlowPartialStream:
        def __init__(self) -> None:
            self.withdrawn = threading.Event()
            self.entered = threading.Event()
            self.calls: list[str] = []

        def accept(self, pcm):
            self.calls.append("accept")
            self.entered.set()
            self.withdrawn.wait(10)  # a partial waiting behind other sessions' finals
            return []

        def cancel_partial(self) -> bool:
            self.calls.append("cancel")
            self.withdrawn.set()
            return True

        def finish(self):
            self.calls.append("finish")
            return []

        def reset(self) -> None:
            pass

    async def on_hyps(hyps):
        pass

    stream = SlowPartialStream()
    pump = StreamPump(executor, stream, on_hyps)
    pump.feed(silence(0.1))
    while not stream.entered.is_set():
        await asyncio.sleep(0.01)
    await asyncio.wait_for(pump.finish(), 5)
    assert stream.calls == ["accept", "cancel", "finish"]
    await pump.close()


def test_recording_channel_offers_what_a_channel_offers():
    from asrhub.protocol import Channel

    public = {name for name in dir(Channel) if not name.startswith("_")}
    instance_attrs = {"protocol", "conn_id", "peer", "opened", "close_reason", "close_code",
                      "errors_sent"}
    missing = {name for name in public | instance_attrs if not hasattr(RecordingChannel(), name)}
    assert not missing, f"RecordingChannel lacks {sorted(missing)}"
