"""Issue 14: long English files through faster-whisper's batched pipeline (``file_batch_size``).

A multi-minute real recording (testdata clips with human transcripts, joined with pauses, as
tests/test_long_files.py builds it) must come out of the batched path as accurately as out of
the sequential one, with absolute, ordered, in-range times. Speed is bench/file_batching.py's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from asrhub.engine import SAMPLE_RATE, Transcript
from asrhub.testing import long_recording
from asrhub_plugins.whisper.engine import BATCHED_MIN_S, WhisperEngine
from asrhub_plugins.whisper.settings import WhisperSettings

from .conftest import cer, read16k, wer

WER_MARGIN = 0.02  # batched may be at most this much worse than sequential


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> WhisperEngine:
    """The batched pipeline (on the CPU the default is the sequential decoder: ``tiny``)."""
    engine = WhisperEngine(WhisperSettings(model="tiny.en", file_batch_size=8),
                           state_dir=tmp_path_factory.mktemp("tiny-batched"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, str]:
    path = tmp_path_factory.mktemp("long") / "long.wav"
    reference = long_recording(path, 150.0)
    return read16k(path), reference


def check_times(transcript: Transcript) -> None:
    segments = transcript.segments
    assert segments
    for seg in segments:
        assert 0.0 <= seg.start <= seg.end <= transcript.duration
        assert seg.text.strip()
        assert 0.0 < seg.confidence <= 1.0
    for before, after in zip(segments, segments[1:], strict=False):
        assert before.end <= after.start + 1e-6
    words = [w for seg in segments for w in seg.words]
    for word in words:
        assert 0.0 <= word.start <= word.end <= transcript.duration
    assert [w.start for w in words] == sorted(w.start for w in words)


@pytest.mark.slow  # two decodes of 2.5 minutes (and two more with word timestamps): ~30 s
@pytest.mark.parametrize("word_timestamps", [False, True])
def test_long_recording_batched_as_accurate_as_sequential(
        batched: WhisperEngine, tiny: WhisperEngine, recording, word_timestamps: bool) -> None:
    audio, reference = recording
    assert len(audio) / SAMPLE_RATE > 120
    chunks, fractions = batched.batched_chunks, []
    result = batched.transcribe(audio, language="en", word_timestamps=word_timestamps,
                                progress=fractions.append)
    assert batched.batched_chunks - chunks >= 5  # 2.5 minutes of speech in chunks of <= 30 s
    plain = tiny.transcribe(audio, language="en", word_timestamps=word_timestamps)
    assert tiny.batched_chunks == 0
    assert result.language == "en" and result.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert wer(reference, result.text) <= wer(reference, plain.text) + WER_MARGIN
    assert wer(reference, result.text) < 0.12
    check_times(result)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 5
    if word_timestamps:
        assert sum(len(seg.words) for seg in result.segments) >= 0.9 * len(reference.split())


def test_short_audio_prompts_and_temperatures_keep_the_sequential_path(batched: WhisperEngine,
                                                                      clip) -> None:
    audio = np.concatenate([clip(f"en/pocketsphinx_librivox_ss01_{n:04d}.wav") for n in (870, 880)])
    assert len(audio) / SAMPLE_RATE < BATCHED_MIN_S
    chunks = batched.batched_chunks
    batched.transcribe(audio, language="en", word_timestamps=True)
    long_audio = np.concatenate([audio] * 4)
    batched.transcribe(long_audio, language="en", prompt="Chapter one.")
    batched.transcribe(long_audio, language="en", temperature=0.4)
    assert batched.batched_chunks == chunks


def test_live_streams_shrink_file_batches(batched: WhisperEngine, monkeypatch) -> None:
    monkeypatch.setattr(batched, "_live_at", -math.inf)
    assert batched.file_batch_now() == batched.settings.file_batch_size > 1
    batched.note_live()  # a live stream is in an utterance
    assert batched.file_batch_now() == 1


@pytest.mark.parametrize("size", [-1, 65])
def test_file_batch_size_is_validated(size: int) -> None:
    with pytest.raises(ValueError, match="file_batch_size"):
        WhisperSettings(model="tiny.en", file_batch_size=size).validate()


@pytest.mark.slow  # the multilingual model on ~50 s of Mandarin: ~15 s
def test_base_detects_mandarin_and_keeps_the_sequential_path(base: WhisperEngine, testdata: Path,
                                                             transcripts) -> None:
    """Whisper without timestamps skipped Mandarin sentences (module docstring of the engine):
    a long Mandarin file is detected as such and decoded sequentially, in simplified script."""
    names = ["zh/funasr_asr_example.wav", "zh/funasr_csharp_example_1.wav",
             "zh/funasr_csharp_example_2.wav", "zh/funasr_llamacpp_sample.wav",
             "zh/paddlespeech_zh.wav", "zh/sherpa_sense_voice_zh.wav"]
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    audio = np.concatenate([x for name in names * 2 for x in (read16k(testdata / name), gap)])
    assert len(audio) / SAMPLE_RATE > BATCHED_MIN_S
    chunks = base.batched_chunks
    transcript = base.transcribe(audio, language=None)
    assert transcript.language == "zh"
    assert base.batched_chunks == chunks
    assert cer("".join(transcripts[name] for name in names * 2), transcript.text) < 0.25
    assert "歡" not in transcript.text and "體" not in transcript.text


@pytest.mark.slow  # builds the 2.5-minute recording when run alone: ~6 s
def test_a_looping_chunk_is_redone_with_absolute_times(batched: WhisperEngine, recording) -> None:
    """The sequential redo of a chunk the pipeline looped on (rare on real speech, so called
    directly): timestamps, words, times moved to the chunk's place in the file."""
    audio, _ = recording
    start, end = 30.0, 55.0
    segments = batched._redo_sequentially(audio, start, end, "en", True, "transcribe")
    assert segments
    for seg in segments:
        assert start <= seg.start <= seg.end <= end + 0.05
        assert all(start <= w.start <= w.end <= end + 0.05 for w in seg.words)
    text = " ".join(s.text for s in segments)
    direct = batched.transcribe(audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)],
                             language="en", word_timestamps=True).text
    assert wer(direct, text) < 0.1  # the same audio, decoded the same way


def test_a_chunk_that_stops_after_its_first_sentence_is_decoded_again(
        batched: WhisperEngine, tiny: WhisperEngine, tmp_path: Path) -> None:
    """Seen on the 20-minute bench file (bench/long_file.py, WER 17 %): in this 40 s stretch of
    the recording, a batched chunk of ~30 s of speech came back as its first sentence only ("At
    that high level, the air is pure."). Such a chunk is now decoded again sequentially."""
    long_recording(tmp_path / "long.wav", 230.0)  # the bench file's first 230 s
    audio = read16k(tmp_path / "long.wav")
    stretch = audio[int(188.3 * SAMPLE_RATE):int(228.3 * SAMPLE_RATE)]
    alone = tiny.transcribe(stretch, language="en")
    result = batched.transcribe(stretch, language="en")
    assert len(alone.text.split()) >= 60
    assert wer(alone.text, result.text) <= 0.1, result.text
    check_times(result)
