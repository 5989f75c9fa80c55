"""Streaming sessions with real models on real audio fed in 20-100 ms chunks."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from asrhub.engine import SAMPLE_RATE, ASRStream, Hypothesis
from asrhub_plugins.vad.silero import SileroVAD
from asrhub_plugins.whisper.engine import WhisperEngine
from asrhub_plugins.whisper.settings import WhisperSettings

from .conftest import wer

FIRST = "en/pocketsphinx_librivox_ss01_0870.wav"  # 7.1 s
SECOND = "en/pocketsphinx_librivox_ss01_0880.wav"  # 3.0 s
MIN_SILENCE_S = 0.5  # Silero default


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def feed(stream: ASRStream, audio: np.ndarray, seed: int = 0) -> list[tuple[float, Hypothesis]]:
    """Feed ``audio`` in random 20-100 ms chunks; (audio time when emitted, hypothesis)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, Hypothesis]] = []
    position = 0
    while position < len(audio):
        size = int(rng.integers(320, 1601))
        chunk = audio[position:position + size]
        position += len(chunk)
        out += [(position / SAMPLE_RATE, h) for h in stream.accept(chunk)]
    out += [(position / SAMPLE_RATE, h) for h in stream.finish()]
    return out


@pytest.fixture(scope="session")
def two_utterances(clip) -> tuple[np.ndarray, float]:
    """~12 s: silence, sentence (7.1 s), 1 s pause, sentence (3 s), silence; and the pause start."""
    audio = np.concatenate([silence(0.5), clip(FIRST), silence(1.0), clip(SECOND), silence(0.6)])
    return audio, 0.5 + len(clip(FIRST)) / SAMPLE_RATE


@pytest.fixture(scope="session")
def tiny_session(tiny: WhisperEngine, two_utterances) -> tuple[list[tuple[float, Hypothesis]], object]:
    stream = tiny.open_stream()
    return feed(stream, two_utterances[0]), stream.stats


@pytest.fixture(scope="session")
def tight(tmp_path_factory) -> WhisperEngine:
    """tiny.en with partials off, 3 s utterances, conditioned on the previous utterance."""
    engine = WhisperEngine(
        WhisperSettings(model="tiny.en", partial_interval=0, max_utterance_s=3.0,
                        condition_on_previous=True),
        state_dir=tmp_path_factory.mktemp("tight"))
    yield engine
    engine.close()


def finals(events: list[tuple[float, Hypothesis]]) -> list[Hypothesis]:
    return [h for _, h in events if h.is_final]


def test_partials_come_before_the_end_and_finals_are_stable(tiny_session, two_utterances) -> None:
    events, _ = tiny_session
    audio, _ = two_utterances
    done = finals(events)
    assert [h.utterance for h in done] == [1, 2]
    for final in done:
        hyps = [(t, h) for t, h in events if h.utterance == final.utterance]
        # exactly one final, and it is the last word on its utterance
        assert [h.is_final for _, h in hyps].count(True) == 1 and hyps[-1][1] is final
        partials = [(t, h) for t, h in hyps if not h.is_final]
        assert partials, f"no partial for utterance {final.utterance}"
        # the first partial came while the utterance was still being spoken
        assert partials[0][0] < final.end
        assert all(h.start == final.start and h.language == "en" for _, h in hyps)
    assert 0 <= done[0].start < done[0].end < done[1].start < done[1].end <= len(audio) / SAMPLE_RATE
    # utterance 1 got several partials (7 s of speech, one per second at most)
    assert 4 <= sum(1 for _, h in events if h.utterance == 1 and not h.is_final) <= 9


def test_finals_match_the_reference_and_the_offline_transcript(
        tiny: WhisperEngine, tiny_session, two_utterances, transcripts) -> None:
    events, _ = tiny_session
    first, second = finals(events)
    assert wer(transcripts[FIRST], first.text) < 0.15
    assert wer(transcripts[SECOND], second.text) < 0.3
    offline = tiny.transcribe(two_utterances[0]).text
    assert wer(offline, f"{first.text} {second.text}") < 0.15


def test_finals_arrive_soon_after_the_speaker_stops(tiny_session, two_utterances) -> None:
    """In audio time: the VAD needs min_silence (0.5 s) of quiet, the decode is already done."""
    events, _ = tiny_session
    _, pause = two_utterances
    first_final_at = next(t for t, h in events if h.is_final)
    assert pause < first_final_at <= pause + MIN_SILENCE_S + 0.25


def test_decode_work_is_bounded_and_finals_reuse_the_last_decode(tiny_session, two_utterances) -> None:
    events, stats = tiny_session
    seconds = len(two_utterances[0]) / SAMPLE_RATE
    assert stats.decodes == stats.partial_decodes + stats.final_decodes
    assert stats.decodes <= math.ceil(seconds / 1.0) + 2
    assert stats.reused_finals >= 1
    assert stats.forced_cuts == 0


def test_final_carries_its_audio(tiny_session) -> None:
    events, _ = tiny_session
    for final in finals(events):
        assert final.audio is not None
        assert len(final.audio) == pytest.approx((final.end - final.start) * SAMPLE_RATE, abs=2)
    assert all(h.audio is None for _, h in events if not h.is_final)


def test_a_vad_stream_given_by_the_caller(tiny: WhisperEngine, tiny_session, two_utterances) -> None:
    events, _ = tiny_session
    vad = SileroVAD().open_stream()
    again = feed(tiny.open_stream(vad=vad), two_utterances[0])
    assert [h.text for h in finals(again)] == [h.text for h in finals(events)]


def test_silence_costs_nothing(tiny: WhisperEngine) -> None:
    stream = tiny.open_stream()
    assert feed(stream, silence(4.0)) == []
    assert stream.stats.decodes == 0


def test_finish_in_the_middle_of_an_utterance(tiny: WhisperEngine, clip, transcripts) -> None:
    stream = tiny.open_stream()
    audio = clip(FIRST)[: 4 * SAMPLE_RATE]
    events = feed(stream, audio)
    last = events[-1][1]
    assert last.is_final and last.end == pytest.approx(4.0)
    assert wer("and mister john dashwood had then leisure", " ".join(last.text.split()[:7])) < 0.3


def test_reset_drops_the_utterance_and_keeps_the_clock(tiny: WhisperEngine, clip, transcripts) -> None:
    stream = tiny.open_stream()
    assert all(not h.is_final for _, h in feed_no_finish(stream, clip(FIRST)[: 3 * SAMPLE_RATE]))
    stream.reset()
    events = feed(stream, np.concatenate([silence(0.3), clip(SECOND), silence(0.6)]))
    done = finals(events)
    assert len(done) == 1 and done[0].start >= 3.0
    assert wer(transcripts[SECOND], done[0].text) < 0.3


def feed_no_finish(stream: ASRStream, audio: np.ndarray) -> list[tuple[float, Hypothesis]]:
    out = []
    for begin in range(0, len(audio), 800):
        out += [(0.0, h) for h in stream.accept(audio[begin:begin + 800])]
    return out


def test_long_utterances_are_cut_and_partials_can_be_off(tight: WhisperEngine, clip, transcripts) -> None:
    stream = tight.open_stream()
    events = feed(stream, np.concatenate([clip(FIRST), silence(0.6)]))
    assert all(h.is_final for _, h in events)  # partial_interval = 0
    assert len(events) >= 2 and stream.stats.forced_cuts >= 1
    spans = [(h.start, h.end) for _, h in events]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(end - start <= 3.0 + 1e-6 for start, end in spans)
    joined = " ".join(h.text for _, h in events)
    assert wer(transcripts[FIRST], joined) < 0.35  # cuts inside words cost a little


def test_partials_wait_while_the_model_is_busy(tiny: WhisperEngine, clip, two_utterances) -> None:
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            tiny.decode(clip(FIRST), "en")

    worker = threading.Thread(target=keep_busy)
    worker.start()
    try:
        while not tiny.busy:
            time.sleep(0.001)
        stream = tiny.open_stream()
        feed_no_finish(stream, two_utterances[0][: 3 * SAMPLE_RATE])
    finally:
        stop.set()
        worker.join()
    assert stream.stats.deferred_partials > 0


def test_base_stream_detects_mandarin_once_and_writes_simplified(base: WhisperEngine, clip) -> None:
    stream = base.open_stream()  # language "auto"
    assert stream.language is None
    events = feed(stream, np.concatenate([clip("zh/funasr_asr_example.wav"), silence(0.6)]))
    done = finals(events)
    assert done and all(h.language == "zh" for h in done)
    assert stream.language == "zh"
    text = "".join(h.text for h in done)
    assert "欢迎" in text and "歡" not in text


def test_streams_are_independent(tiny: WhisperEngine, clip, transcripts, tmp_path: Path) -> None:
    """Two streams interleaved chunk by chunk on one engine."""
    a, b = tiny.open_stream(), tiny.open_stream()
    audio_a = np.concatenate([clip(FIRST), silence(0.6)])
    audio_b = np.concatenate([clip(SECOND), silence(0.6)])
    out_a: list[Hypothesis] = []
    out_b: list[Hypothesis] = []
    for begin in range(0, max(len(audio_a), len(audio_b)), 1600):
        out_a += a.accept(audio_a[begin:begin + 1600])
        out_b += b.accept(audio_b[begin:begin + 1600])
    out_a += a.finish()
    out_b += b.finish()
    assert wer(transcripts[FIRST], " ".join(h.text for h in out_a if h.is_final)) < 0.15
    assert wer(transcripts[SECOND], " ".join(h.text for h in out_b if h.is_final)) < 0.3


def test_long_sessions_keep_a_bounded_buffer(tiny: WhisperEngine, clip) -> None:
    """Ten minutes of mostly silence with speech now and then: memory and work stay flat."""
    stream = tiny.open_stream()
    speech = np.concatenate([clip(SECOND), silence(0.6)])
    for minute in range(10):
        for _second in range(60):
            stream.accept(silence(1.0))
        if minute % 5 == 0:
            stream.accept(speech)
    assert stream.samples >= 600 * SAMPLE_RATE
    assert stream._audio.end - stream._audio.start <= 10 * SAMPLE_RATE
    assert len(stream._audio._data) <= 64 * SAMPLE_RATE
    assert stream.stats.decodes <= 10
