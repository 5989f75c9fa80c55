"""The core's utterance segmenter as session_broadcast configures it (regions of the VAD, the
max-utterance rule cut at the quietest point), with the real Silero VAD on real recordings."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asrhub.segmenter import SpeechEnded, UtteranceSegmenter
from asrhub_plugins.session_broadcast.pipeline import make_segmenter
from asrhub_plugins.session_broadcast.settings import BroadcastSettings
from asrhub_plugins.vad.silero import SileroVAD

from .conftest import RATE, load, quiet


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def Segmenter(vad_stream, *, max_segment_s: float) -> UtteranceSegmenter:  # noqa: N802
    return make_segmenter(BroadcastSettings(max_segment_s=max_segment_s), vad_stream)


def run(segmenter: UtteranceSegmenter, audio: np.ndarray, chunk: int,
        min_segment_s: float = 0.3) -> list[SpeechEnded]:
    """The segments the session would recognise (ends of at least min_segment_s)."""
    events = []
    for begin in range(0, len(audio), chunk):
        events += segmenter.accept(audio[begin:begin + chunk])
    events += segmenter.finish()
    return [e for e in events if isinstance(e, SpeechEnded) and e.samples >= min_segment_s * RATE]


def test_three_sentences_give_three_segments_in_place(vad, recordings):
    audio, _ = sf.read(str(recordings["three"]), dtype="float32")
    segments = run(Segmenter(vad.open_stream(), max_segment_s=20), audio, 3200)
    assert len(segments) == 3
    starts = [0.5]
    for clip in ("en/pocketsphinx_librivox_ss01_0880.wav", "en/pocketsphinx_librivox_ss01_0890.wav"):
        starts.append(starts[-1] + len(load(clip)) / RATE + 1.2)
    for segment, start in zip(segments, starts, strict=True):
        # each segment is its sentence's audio, cut from the stream where it was
        assert abs(segment.start / RATE - start) < 1.0
        np.testing.assert_array_equal(segment.audio, audio[segment.start:segment.start + segment.samples])
    assert segments == sorted(segments, key=lambda s: s.start)


def test_same_segments_however_the_audio_is_chunked(vad, recordings):
    audio, _ = sf.read(str(recordings["three"]), dtype="float32")
    a = run(Segmenter(vad.open_stream(), max_segment_s=20), audio, 3200)
    b = run(Segmenter(vad.open_stream(), max_segment_s=20), audio, 4096)
    assert [(s.start, s.samples) for s in a] == [(s.start, s.samples) for s in b]


def test_long_speech_is_cut_below_the_limit_without_losing_audio(vad):
    speech = load("en/pocketsphinx_librivox_ss01_0870.wav")  # 7.1 s, no long pause
    audio = np.concatenate([quiet(0.3), speech, quiet(0.8)])
    segments = run(Segmenter(vad.open_stream(), max_segment_s=3), audio, 1600)
    assert len(segments) >= 3
    assert all(s.duration <= 3.0 for s in segments)
    # the cuts lose nothing: the pieces follow each other over all the speech the same
    # detector finds (the last one may run into the silence the VAD had not yet called)
    (start, end), = vad.speech_regions(audio)
    assert segments[0].start == start
    for before, after in zip(segments, segments[1:], strict=False):
        assert after.start == before.start + before.samples
    assert segments[-1].start + segments[-1].samples >= end


def test_silence_gives_nothing_and_keeps_little_audio(vad):
    segmenter = Segmenter(vad.open_stream(), max_segment_s=20)
    for begin in range(0, 10 * RATE, 3200):
        assert segmenter.accept(quiet(10.0)[begin:begin + 3200]) == []
    assert segmenter.position == 10 * RATE
    assert segmenter.history.samples <= 2 * RATE + 3200
