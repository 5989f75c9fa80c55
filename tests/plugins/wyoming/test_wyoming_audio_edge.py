"""The audio edge the Wyoming listener uses: PCM of any rate / width / channels, chunk by
chunk, equals converting the whole recording at once."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from asrhub.audio import AudioError, PcmStream

from .conftest import LONG, load, to_pcm


def convert_in_chunks(pcm: bytes, rate: int, width: int, channels: int, step: int) -> np.ndarray:
    stream = PcmStream(rate, width, channels)
    parts = [stream.convert(pcm[i:i + step]) for i in range(0, len(pcm), step)]
    return np.concatenate([*parts, stream.flush()])


@pytest.mark.parametrize("rate, width, channels", [
    (16000, 2, 1), (8000, 2, 1), (44100, 2, 2), (48000, 4, 2), (22050, 1, 1), (16000, 1, 3),
])
def test_any_format_becomes_the_same_16k_mono(rate, width, channels):
    audio = load(LONG)[:3 * 16000]
    pcm = to_pcm(audio, rate, width, channels)
    # an odd step: chunks end inside frames, and the resampler sees uneven pieces
    out = convert_in_chunks(pcm, rate, width, channels, step=997)
    # what one whole-recording conversion gives: mono mix of the decoded samples, then soxr
    expected_in = to_pcm(audio, rate, width, channels)
    whole = PcmStream(rate, width, channels)
    mono = whole._mono(expected_in[:len(expected_in) - len(expected_in) % (width * channels)])
    expected = soxr.resample(mono, rate, 16000, quality="HQ") if rate != 16000 else mono
    assert abs(len(out) - len(expected)) <= 2
    n = min(len(out), len(expected))
    assert np.max(np.abs(out[:n] - expected[:n])) < 1e-3
    # and the signal survived: close to the original (quantisation and two resamplings)
    original = audio * np.mean([1.0 - 0.3 * c for c in range(channels)])
    n = min(n, len(original))
    tolerance = 0.02 if width == 1 else 0.01
    assert np.sqrt(np.mean((out[:n] - original[:n]) ** 2)) < tolerance


def test_sample_widths_decode_exactly():
    stream = PcmStream(16000, 3, 1)
    values = [0, 1, -1, 8388607, -8388608]
    data = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    np.testing.assert_allclose(stream.convert(data), np.array(values) / 8388608.0, atol=1e-7)
    np.testing.assert_allclose(PcmStream(16000, 1, 1).convert(bytes([0, 128, 255])),
                               [-1.0, 0.0, 127 / 128], atol=1e-7)
    both = PcmStream(16000, 2, 2).convert(np.array([1000, 3000], "<i2").tobytes())
    np.testing.assert_allclose(both, [2000 / 32768], atol=1e-7)


def test_a_partial_frame_waits_for_its_bytes():
    stream = PcmStream(16000, 2, 2)
    data = np.array([100, 300, -200, -400], "<i2").tobytes()
    assert len(stream.convert(data[:3])) == 0
    np.testing.assert_allclose(stream.convert(data[3:]), [200 / 32768, -300 / 32768], atol=1e-7)
    assert stream.frames_in == 2


@pytest.mark.parametrize("rate, width, channels", [
    (0, 2, 1), (500, 2, 1), (10_000_000, 2, 1), (16000, 0, 1), (16000, 5, 1), (16000, 2, 0),
    (16000, 2, 64), (16000.0, 2, 1), (True, 2, 1),
])
def test_formats_it_cannot_convert_are_audio_errors(rate, width, channels):
    with pytest.raises(AudioError):
        PcmStream(rate, width, channels)
