"""The core's utterance segmenter (asrhub/segmenter.py) with vad_stream's dual hysteresis.

The arithmetic is checked with a scripted VAD stream (raw regions reported at chosen delays, the
way a streaming VAD reports them late); the behaviour on speech is checked with the hub's real
Silero engine on real recordings.
"""

from __future__ import annotations

import numpy as np
import pytest

from asrhub.segmenter import SpeechEnded, SpeechStarted, UtteranceSegmenter
from asrhub.testing import ScriptedVADStream
from asrhub_plugins.vad.silero import SileroSettings, SileroVAD
from asrhub_plugins.vad_stream.quality import rms, segment_rejection, text_rejection
from asrhub_plugins.vad_stream.session import make_segmenter
from asrhub_plugins.vad_stream.settings import VadStreamSettings

from .conftest import CLIP_GO, CLIP_NOT_ILL, samples

FRAME = 512


def run(segmenter: UtteranceSegmenter, total: int, chunk: int = 320) -> list:
    """Feed ``total`` samples (a ramp, so segment audio can be located) in ``chunk`` pieces."""
    signal = (np.arange(total, dtype=np.float32) / 10 ** 7)
    events = []
    for begin in range(0, total, chunk):
        events += segmenter.accept(signal[begin:begin + chunk])
    return events


def make(regions, delays=(0, 0), **kwargs) -> UtteranceSegmenter:
    options = dict(enter_samples=3 * FRAME, exit_samples=10 * FRAME, prefix_samples=4800,
                   history_samples=32000, max_samples=30 * 16000)
    options.update(kwargs)
    return UtteranceSegmenter(ScriptedVADStream(regions, *delays), **options)


def ends(events) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


def test_a_region_gives_start_then_end_with_prefix_and_silence_window():
    events = run(make([(32000, 64000)]), 16000 * 8)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].sample == 32000
    end = events[1]
    assert end.start == 32000 - 4800  # pre-roll
    assert end.samples == (64000 + 10 * FRAME) - (32000 - 4800)  # + silence_frames after the end
    assert end.speech_samples == 32000
    assert end.audio[0] == pytest.approx(end.start / 10 ** 7)  # the audio is the stream's own


def test_a_blip_shorter_than_speech_frames_is_never_speech():
    events = run(make([(32000, 32000 + 2 * FRAME)]), 16000 * 5)
    assert events == []
    events = run(make([(32000, 32000 + 3 * FRAME)]), 16000 * 5)  # exactly speech_frames: speech
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]


def test_a_pause_shorter_than_silence_frames_joins_two_regions():
    short_gap = [(16000, 32000), (32000 + 9 * FRAME, 48000)]
    events = run(make(short_gap), 16000 * 6)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[1].speech_samples == 16000 + (48000 - 32000 - 9 * FRAME)
    long_gap = [(16000, 32000), (32000 + 11 * FRAME, 48000)]
    events = run(make(long_gap), 16000 * 6)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    first, second = ends(events)
    assert first.start + first.samples <= second.start  # segments never overlap


def test_events_do_not_depend_on_chunking_or_reporting_delay():
    regions = [(20000, 41000), (60000, 70000), (90000, 90500)]
    reference = [(type(e), getattr(e, "sample", None), getattr(e, "samples", None))
                 for e in run(make(regions), 16000 * 8, chunk=320)]
    silero_like = (4000, 8000)  # starts confirmed after 250 ms, ends after 500 ms of quiet
    for chunk, delays in ((512, (0, 0)), (7000, (0, 0)), (320, silero_like), (7000, silero_like),
                          (16000 * 8, silero_like)):
        got = [(type(e), getattr(e, "sample", None), getattr(e, "samples", None))
               for e in run(make(regions, delays), 16000 * 8, chunk=chunk)]
        assert got == reference, (chunk, delays)


def test_long_speech_is_cut_at_max_segment_and_goes_on():
    segmenter = make([(16000, 16000 * 12)], max_samples=16000 * 5, cut_search_samples=0)
    events = run(segmenter, 16000 * 14)
    cuts = ends(events)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 3
    assert [c.forced for c in cuts] == [True, True, False]
    assert all(c.samples <= 16000 * 5 for c in cuts)
    assert sum(c.speech_samples for c in cuts) == 16000 * 11


def test_finish_closes_an_open_segment_and_restarts_the_stream():
    segmenter = make([(16000, 10 ** 9)])
    events = run(segmenter, 16000 * 3)
    assert [type(e) for e in events] == [SpeechStarted]
    assert segmenter.in_speech
    closing = segmenter.finish()
    assert [type(e) for e in closing] == [SpeechEnded]
    assert closing[0].start + closing[0].samples == 16000 * 3
    assert not segmenter.in_speech and segmenter.pos == 0


def test_history_is_bounded_while_idle():
    segmenter = make([])
    run(segmenter, 16000 * 60)
    kept = segmenter.history.end - segmenter.history.start
    assert kept <= 32000 + 320


# ---------------------------------------------------------------------------- real Silero


@pytest.fixture(scope="module")
def silero() -> SileroVAD:
    return SileroVAD(SileroSettings())


def test_silero_segments_two_utterances(silero):
    settings = VadStreamSettings()
    def quiet(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * 16000), np.float32)

    first = samples(CLIP_NOT_ILL).astype(np.float32) / 32768
    second = samples(CLIP_GO).astype(np.float32) / 32768
    audio = np.concatenate([quiet(0.5), first, quiet(1.5), second, quiet(1.5)])
    second_at = 8000 + len(first) + 24000
    segmenter = make_segmenter(settings, silero.open_stream())
    events = []
    for begin in range(0, len(audio), 320):  # the seed's 20 ms messages
        events += segmenter.accept(audio[begin:begin + 320])
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2
    one, two = ends(events)
    # Each segment holds (most of) its utterance and little else, and passes the filters.
    assert 8000 - 4800 <= one.start and one.start + one.samples <= second_at
    assert second_at - 4800 <= two.start <= second_at + 16000
    assert 0.6 * len(first) <= one.samples <= len(first) + 16000
    assert 0.6 * len(second) <= two.samples <= len(second) + 16000
    for segment in (one, two):
        assert segment_rejection(segment, settings) is None
        assert segment.speech_ratio > 0.5


def test_quality_filters_reject_quiet_noise_and_short_segments():
    settings = VadStreamSettings()
    quiet = SpeechEnded(np.full(16000, 0.005, np.float32), 0, 16000)
    assert "energy" in segment_rejection(quiet, settings)
    assert rms(np.full(100, 0.5, np.float32)) == pytest.approx(0.5)
    sparse = SpeechEnded(np.full(16000, 0.1, np.float32), 0, 4000)  # 25 % speech
    assert "ratio" in segment_rejection(sparse, settings)
    short = SpeechEnded(np.full(4000, 0.1, np.float32), 0, 4000)  # 0.25 s
    assert "duration" in segment_rejection(short, settings)
    assert text_rejection("你好", settings) is None
    assert text_rejection("Go forward.", settings) is None
    for bad in ("", " ", "嗯", "?!", "，。", "123", "a"):
        assert text_rejection(bad, settings) is not None, bad
    assert text_rejection("嗯", VadStreamSettings(min_text_length=1)) is None
