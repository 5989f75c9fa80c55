"""asrhub/segmenter.py: the quiet-point cut, the max-utterance rule and the segment pump (with a
scripted VAD stream for exact arithmetic; the real Silero is exercised by the vad_stream and
session_broadcast tests)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from asrhub.executor import InferenceExecutor
from asrhub.segmenter import (
    SegmentPump,
    SpeechEnded,
    SpeechStarted,
    UtteranceSegmenter,
    quietest_point,
)
from asrhub.streaming import BacklogFull
from asrhub.testing import ScriptedVADStream

RATE = 16000


class RegionsVAD(ScriptedVADStream):
    """Fixed speech regions, each edge reported as soon as it has been heard."""

    def __init__(self, regions: list[tuple[int, int]]) -> None:
        super().__init__(regions, flush_all=False)


def test_quietest_point_is_the_middle_of_the_quietest_frame():
    audio = np.full(RATE, 0.5, np.float32)
    audio[8000:9600] = 0.001  # 100 ms of near silence
    assert quietest_point(audio) == 8000 + 800
    assert quietest_point(audio, 0, 4000) in range(0, 4000)  # only within [lo, hi)
    assert quietest_point(audio, 100, 500) == 500  # no whole frame: hi
    assert quietest_point(audio, 6400, 12800, frame=800) == 8000 + 400


def test_long_speech_is_cut_at_its_quietest_point_and_nothing_is_lost():
    audio = np.full(RATE * 12, 0.3, np.float32)
    audio[RATE * 4:RATE * 4 + 1600] = 0.0  # a breath, 3 s into the speech
    segmenter = UtteranceSegmenter(RegionsVAD([(RATE, RATE * 11)]), max_samples=RATE * 5,
                                   cut_search_samples=RATE * 4)
    events = []
    for begin in range(0, len(audio), 320):
        events += segmenter.accept(audio[begin:begin + 320])
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert ends[0].forced and ends[0].start == RATE and ends[0].start + ends[0].samples == RATE * 4 + 800
    assert all(e.samples <= RATE * 5 for e in ends)
    for before, after in zip(ends, ends[1:], strict=False):  # contiguous: the cuts lose nothing
        assert after.start == before.start + before.samples
    assert ends[-1].start + ends[-1].samples == RATE * 11 and not ends[-1].forced
    assert [type(e) for e in events].count(SpeechStarted) == len(ends)


def test_without_a_quiet_search_the_cut_is_at_the_limit():
    segmenter = UtteranceSegmenter(RegionsVAD([(0, RATE * 7)]), max_samples=RATE * 3,
                                   cut_search_samples=0)
    events = segmenter.accept(np.full(RATE * 8, 0.3, np.float32))
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert [(e.start, e.samples, e.forced) for e in ends] == [
        (0, RATE * 3, True), (RATE * 3, RATE * 3, True), (RATE * 6, RATE, False)]


@pytest.fixture
async def executor():
    pool = InferenceExecutor(workers=1, max_pending=8)
    yield pool
    await pool.shutdown()


async def test_pump_keeps_order_bounds_its_backlog_and_closes_an_utterance(executor):
    got: list = []

    async def on_events(events) -> None:
        got.extend(events)

    async def open_segmenter() -> UtteranceSegmenter:
        return UtteranceSegmenter(RegionsVAD([(RATE, RATE * 10)]))

    async def run(fn, *args):
        return await executor.run(fn, *args)

    pump = SegmentPump(open_segmenter, run, on_events, max_backlog_s=3.0)
    for _ in range(6):
        pump.feed(np.full(RATE // 2, 0.1, np.float32))  # 3 s at once: at the limit
    with pytest.raises(BacklogFull):
        pump.feed(np.zeros(1, np.float32))
    await pump.drain()
    assert pump.backlog_seconds == 0 and pump.in_speech
    assert [type(e) for e in got] == [SpeechStarted]
    await pump.finish()  # the open utterance ends where the audio stopped
    assert [type(e) for e in got] == [SpeechStarted, SpeechEnded]
    assert got[1].start == RATE and got[1].samples == RATE * 2
    assert pump.audio_seconds == 3.0
    await pump.close()


async def test_pump_reports_a_failing_segmenter_and_starts_a_fresh_one(executor):
    opened: list[int] = []
    failures: list[Exception] = []

    class Broken(RegionsVAD):
        def accept(self, pcm):
            if len(opened) == 1:
                raise RuntimeError("vad broke")
            return super().accept(pcm)

    async def open_segmenter() -> UtteranceSegmenter:
        opened.append(1)
        return UtteranceSegmenter(Broken([]))

    async def on_error(exc: Exception) -> None:
        failures.append(exc)

    async def run(fn, *args):
        return await executor.run(fn, *args)

    async def ignore(events) -> None:
        pass

    pump = SegmentPump(open_segmenter, run, ignore, max_backlog_s=1.0, on_error=on_error)
    pump.feed(np.zeros(1600, np.float32))
    await pump.drain()
    assert [str(e) for e in failures] == ["vad broke"] and pump.segmenter is None
    pump.feed(np.zeros(1600, np.float32))
    await pump.drain()
    assert len(opened) == 2 and len(failures) == 1 and pump.segmenter is not None
    await asyncio.wait_for(pump.close(), 5)
