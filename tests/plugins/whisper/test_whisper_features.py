"""Bounded memory for files in the Whisper engine: the log-mel features
(:mod:`asrhub_plugins.whisper.features`: faster-whisper's, a block of frames at a time, so that a
long piece's spectrogram does not sit in memory whole), and file encoder passes that take turns."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from asrhub.engine import SAMPLE_RATE
from asrhub_plugins.whisper.engine import WhisperEngine, _one_at_a_time
from asrhub_plugins.whisper.features import BLOCK_FRAMES, BlockFeatureExtractor


@pytest.mark.parametrize("samples", [1, 399, 400, SAMPLE_RATE, BLOCK_FRAMES * 160 - 160,
                                     BLOCK_FRAMES * 160, BLOCK_FRAMES * 160 + 77, 95 * SAMPLE_RATE + 3])
@pytest.mark.parametrize("padding", [160, 3 * SAMPLE_RATE])
def test_the_same_features_as_faster_whisper(samples: int, padding: int) -> None:
    audio = (np.random.default_rng(samples).standard_normal(samples) * 0.1).astype(np.float32)
    ours, theirs = BlockFeatureExtractor(), FeatureExtractor()
    got, want = ours(audio, padding=padding), theirs(audio, padding=padding)
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_the_same_features_on_speech(clip) -> None:
    audio = np.concatenate([clip("en/pocketsphinx_goforward.wav")] * 20)  # 56 s: several blocks
    np.testing.assert_allclose(BlockFeatureExtractor()(audio), FeatureExtractor()(audio),
                               rtol=0, atol=1e-6)


def test_the_engine_uses_them(tiny: WhisperEngine) -> None:
    extractor = tiny._model.feature_extractor
    assert isinstance(extractor, BlockFeatureExtractor)
    assert extractor.mel_filters.shape[0] == tiny._ct2.n_mels


def test_file_encoder_passes_take_turns(tiny: WhisperEngine, clip) -> None:
    running, most, lock = [0], [0], threading.Lock()

    def encode(features: np.ndarray) -> np.ndarray:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return features

    in_turn = _one_at_a_time(encode)
    threads = [threading.Thread(target=in_turn, args=(np.zeros(1),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    # The engine's faster-whisper model encodes that way on the CPU, and still transcribes.
    assert tiny._model.encode.__name__ == "encode_in_turn"
    audio = np.concatenate([clip("en/pocketsphinx_goforward.wav"), np.zeros(16000, np.float32)] * 12)
    assert "forward" in tiny.transcribe(audio, word_timestamps=True).text.lower()
