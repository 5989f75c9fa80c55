"""The Silero VAD engine on real recordings (no mocks: the real ONNX model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrhub.config import ConfigError
from asrhub.engine import SAMPLE_RATE, VADEngine, VADEvent, VADStream
from asrhub.testing import make_hub
from asrhub_plugins.vad.silero import WINDOW, SileroSettings, SileroVAD


def read16k(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE, path
    return audio.mean(axis=1)


@pytest.fixture(scope="session")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="session")
def digits(testdata: Path) -> np.ndarray:
    # Three groups of digits ("10001 90210 01803") separated by ~1 s pauses.
    return read16k(testdata / "en" / "vosk_test.wav")


@pytest.fixture(scope="session")
def two_sentences(testdata: Path) -> tuple[np.ndarray, int, int]:
    """Two LibriVox sentences with 1.2 s of silence between: (audio, gap start, gap end)."""
    first = read16k(testdata / "en" / "pocketsphinx_librivox_ss01_0880.wav")
    second = read16k(testdata / "en" / "pocketsphinx_librivox_ss01_0890.wav")
    gap = np.zeros(int(1.2 * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([first, gap, second]), len(first), len(first) + len(gap)


def stream_events(vad: SileroVAD, audio: np.ndarray, chunk: int) -> list[VADEvent]:
    stream = vad.open_stream()
    events: list[VADEvent] = []
    for begin in range(0, len(audio), chunk):
        events += stream.accept(audio[begin:begin + chunk])
    return events + stream.finish()


def assert_paired(events: list[VADEvent], length: int) -> list[tuple[int, int]]:
    kinds = [e.kind for e in events]
    assert kinds == ["start", "end"] * (len(events) // 2), kinds
    samples = [e.sample for e in events]
    assert samples == sorted(samples)
    assert all(0 <= s <= length for s in samples)
    return list(zip(samples[::2], samples[1::2], strict=True))


def test_engine_and_stream_satisfy_the_interfaces(vad: SileroVAD) -> None:
    assert isinstance(vad, VADEngine)
    assert isinstance(vad.open_stream(), VADStream)


def test_three_phrases_give_three_regions(vad: SileroVAD, digits: np.ndarray) -> None:
    regions = assert_paired(stream_events(vad, digits, 1600), len(digits))
    assert len(regions) == 3
    for start, end in regions:
        assert 0.5 * SAMPLE_RATE < end - start < 3 * SAMPLE_RATE


def test_two_sentences_split_at_the_pause(vad: SileroVAD, two_sentences) -> None:
    audio, gap_start, gap_end = two_sentences
    regions = assert_paired(stream_events(vad, audio, 480), len(audio))
    assert len(regions) == 2
    (first_start, first_end), (second_start, second_end) = regions
    assert first_start < 0.5 * SAMPLE_RATE
    # Ends inside the pause (speech end + 100 ms pad) and the next start is after the pause
    # began (speech start - 100 ms pad).
    assert gap_start - 0.5 * SAMPLE_RATE < first_end <= gap_start + 0.2 * SAMPLE_RATE
    assert gap_end - 0.2 * SAMPLE_RATE <= second_start < gap_end + 0.5 * SAMPLE_RATE
    assert second_end > len(audio) - 0.8 * SAMPLE_RATE


def test_silence_and_faint_noise_give_no_events(vad: SileroVAD) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    hiss = (rng.standard_normal(5 * SAMPLE_RATE) * 0.002).astype(np.float32)
    for audio in (silence, hiss):
        assert stream_events(vad, audio, 1000) == []
        assert vad.speech_regions(audio) == []


@pytest.mark.parametrize("chunk", [1, 333, 512, 1601])
def test_chunking_does_not_change_events(vad: SileroVAD, digits: np.ndarray, chunk: int) -> None:
    audio = digits[: 4 * SAMPLE_RATE] if chunk == 1 else digits
    whole = stream_events(vad, audio, len(audio))
    assert whole
    assert stream_events(vad, audio, chunk) == whole


def test_speech_regions_match_the_stream(vad: SileroVAD, digits: np.ndarray) -> None:
    events = stream_events(vad, digits, 333)
    assert vad.speech_regions(digits) == assert_paired(events, len(digits))


def test_events_come_min_silence_after_speech_stops(vad: SileroVAD, two_sentences) -> None:
    """Latency: each event is reported about min_speech / min_silence after what it marks."""
    audio, _, _ = two_sentences
    settings = vad.settings
    stream = vad.open_stream()
    chunk = 320  # 20 ms
    for begin in range(0, len(audio), chunk):
        reported_at = min(begin + chunk, len(audio))
        for event in stream.accept(audio[begin:begin + chunk]):
            delay_ms = (reported_at - event.sample) * 1000 / SAMPLE_RATE
            if event.kind == "start":
                assert delay_ms <= settings.min_speech_ms + settings.speech_pad_ms + 2 * 32 + 20
            else:
                assert delay_ms <= settings.min_silence_ms - settings.speech_pad_ms + 32 + 20


def test_finish_closes_an_open_region_and_reset_starts_over(vad: SileroVAD, digits: np.ndarray) -> None:
    stream = vad.open_stream()
    cut = int(1.5 * SAMPLE_RATE)  # inside the first group of digits
    events = stream.accept(digits[:cut])
    assert [e.kind for e in events] == ["start"]
    assert stream.in_speech
    closing = stream.finish()
    assert closing == [VADEvent("end", cut)]
    stream.reset()
    assert stream.samples == 0 and not stream.in_speech
    again = stream.accept(digits[:cut])
    assert again == events


def test_silence_since_marks_the_pause_before_the_end_event(vad: SileroVAD, two_sentences) -> None:
    audio, gap_start, _ = two_sentences
    stream = vad.open_stream()
    seen: list[int] = []
    for begin in range(0, len(audio), 512):
        events = stream.accept(audio[begin:begin + 512])
        if stream.silence_since is not None:
            seen.append(stream.silence_since)
        if any(e.kind == "end" for e in events):
            break
    assert seen, "silence_since was never set before the end event"
    assert abs(seen[-1] - gap_start) < 0.4 * SAMPLE_RATE


def test_longer_min_silence_merges_phrases(digits: np.ndarray) -> None:
    patient = SileroVAD(SileroSettings(min_silence_ms=2000))
    regions = patient.speech_regions(digits)
    assert len(regions) == 1


def test_short_blips_are_not_speech(vad: SileroVAD, digits: np.ndarray) -> None:
    probs = vad.speech_probabilities(digits)
    assert len(probs) == -(-len(digits) // WINDOW)
    assert probs.max() > 0.9 and probs.min() < 0.1
    # A 100 ms burst of speech (shorter than min_speech_ms) in silence is dropped.
    loud = int(np.argmax(probs)) * WINDOW
    blip = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    blip[SAMPLE_RATE:SAMPLE_RATE + 1600] = digits[loud:loud + 1600]
    assert vad.speech_regions(blip) == []


def test_registered_as_the_default_vad_and_configurable(tmp_path: Path) -> None:
    hub = make_hub({"server": {"state_dir": str(tmp_path)},
                    "engines": {"silero": {"min_silence_ms": 700, "threshold": 0.6}}})
    assert "silero" in hub.engine_specs["vad"]
    engine = hub.engine_sync("vad")
    assert isinstance(engine, SileroVAD)
    assert engine.settings.min_silence_ms == 700 and engine.settings.negative_threshold == pytest.approx(0.45)
    with pytest.raises(ConfigError, match="min_silense_ms"):
        make_hub({"engines": {"silero": {"min_silense_ms": 700}}})
    with pytest.raises(ConfigError, match="threshold"):
        make_hub({"engines": {"silero": {"threshold": 1.5}}})
