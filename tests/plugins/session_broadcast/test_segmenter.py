"""The segmenter with the real Silero VAD on real recordings."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asrhub_plugins.session_broadcast.pipeline import Segmenter
from asrhub_plugins.vad.silero import SileroVAD

from .conftest import RATE, load, quiet


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def run(segmenter: Segmenter, audio: np.ndarray, chunk: int) -> list:
    segments = []
    for begin in range(0, len(audio), chunk):
        segments += segmenter.accept(audio[begin:begin + chunk])
    return segments + segmenter.finish()


def test_three_sentences_give_three_segments_in_place(vad, recordings):
    audio, _ = sf.read(str(recordings["three"]), dtype="float32")
    segments = run(Segmenter(vad.open_stream(), max_segment_s=20, min_segment_s=0.3), audio, 3200)
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
    a = run(Segmenter(vad.open_stream(), max_segment_s=20, min_segment_s=0.3), audio, 3200)
    b = run(Segmenter(vad.open_stream(), max_segment_s=20, min_segment_s=0.3), audio, 4096)
    assert [(s.start, s.samples) for s in a] == [(s.start, s.samples) for s in b]


def test_long_speech_is_cut_below_the_limit_without_losing_audio(vad):
    speech = load("en/pocketsphinx_librivox_ss01_0870.wav")  # 7.1 s, no long pause
    audio = np.concatenate([quiet(0.3), speech, quiet(0.8)])
    segments = run(Segmenter(vad.open_stream(), max_segment_s=3, min_segment_s=0.3), audio, 1600)
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
    segmenter = Segmenter(vad.open_stream(), max_segment_s=20, min_segment_s=0.3)
    assert run(segmenter, quiet(10.0), 3200) == []
    assert segmenter.position == 10 * RATE
    assert len(segmenter._buf) <= 2 * RATE
