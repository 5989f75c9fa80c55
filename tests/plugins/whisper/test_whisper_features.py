"""The engine's log-mel features (:mod:`asrhub_plugins.whisper.features`): faster-whisper's, a
block of frames at a time, so that a long piece's spectrogram does not sit in memory whole."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from asrhub.engine import SAMPLE_RATE
from asrhub_plugins.whisper.engine import WhisperEngine
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
