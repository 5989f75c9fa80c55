"""The audio edge: every container and wire format → mono float32 16 kHz, bad input → AudioError."""

from __future__ import annotations

import base64
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from asrhub import audio
from asrhub.audio import AudioError

SOURCE = "en/pocketsphinx_goforward.wav"

# (extension, container format, codec): what users upload and what browsers record.
CONTAINERS = [
    ("mp3", "mp3", "libmp3lame"),
    ("m4a", "ipod", "aac"),
    ("mp4", "mp4", "aac"),
    ("aac", "adts", "aac"),
    ("ogg", "ogg", "vorbis"),  # written by libsndfile: the PyAV wheel has no vorbis encoder
    ("oga", "ogg", "libopus"),
    ("opus", "opus", "libopus"),
    ("webm", "webm", "libopus"),
    ("flac", "flac", "flac"),
]


def encode(samples: np.ndarray, rate: int, path: Path, fmt: str, codec: str) -> None:
    if codec == "vorbis":
        sf.write(path, samples, rate, format="OGG", subtype="VORBIS")
        return
    with av.open(str(path), "w", format=fmt) as out:
        out_rate = 48000 if codec == "libopus" else rate
        stream = out.add_stream(codec, rate=out_rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=out_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        for chunk in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def source(testdata):
    samples, rate = sf.read(testdata / SOURCE, dtype="float32")
    return samples, rate


@pytest.mark.parametrize(("ext", "fmt", "codec"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_container_decodes_to_16k_mono(tmp_path, source, ext, fmt, codec):
    samples, rate = source
    path = tmp_path / f"clip.{ext}"
    encode(samples, rate, path, fmt, codec)
    decoded = audio.decode_file(path)
    from_bytes = audio.decode_bytes(path.read_bytes(), name=path.name)
    expected = len(samples) * 16000 / rate
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # lossy codecs add priming/padding; the duration stays within ~100 ms
    assert abs(len(decoded) - expected) < 0.1 * 16000, (len(decoded), expected)
    assert abs(len(from_bytes) - len(decoded)) < 0.05 * 16000
    assert 0.01 < float(np.sqrt(np.mean(decoded**2))) < 1.0


def test_stereo_and_other_rates_resampled(testdata):
    # speechbrain_example2.flac is stereo, 44.1 kHz according to the manifest notes
    info = sf.info(testdata / "en/speechbrain_example2.flac")
    decoded = audio.decode_file(testdata / "en/speechbrain_example2.flac")
    assert decoded.ndim == 1
    assert abs(len(decoded) - info.frames * 16000 / info.samplerate) <= 2


def test_wire_formats_roundtrip():
    pcm = (np.sin(np.linspace(0, 100, 1600)) * 0.5).astype(np.float32)
    as_int16 = audio.float_to_pcm16(pcm)
    assert np.allclose(audio.pcm16le_to_float(as_int16), pcm, atol=1e-4)
    assert np.allclose(audio.b64_pcm16_to_float(base64.b64encode(as_int16).decode()), pcm, atol=1e-4)
    assert np.array_equal(audio.float32le_to_float(pcm.astype("<f4").tobytes()), pcm)


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda: audio.pcm16le_to_float(b"\x00\x01\x02"), "odd_length"),
        (lambda: audio.float32le_to_float(b"\x00" * 6), "odd_length"),
        (lambda: audio.float32le_to_float(np.array([np.nan], "<f4").tobytes()), "invalid_samples"),
        (lambda: audio.float32le_to_float(np.array([np.inf], "<f4").tobytes()), "invalid_samples"),
        (lambda: audio.b64_pcm16_to_float("not base64!!"), "invalid_base64"),
        (lambda: audio.decode_bytes(b""), "empty"),
        (lambda: audio.decode_bytes(b"this is not audio at all" * 100), "undecodable"),
        (lambda: audio.decode_bytes(bytes(range(256)) * 40), "undecodable"),
    ],
)
def test_bad_input_is_a_clear_error(call, reason):
    with pytest.raises(AudioError) as err:
        call()
    assert err.value.reason == reason
    assert str(err.value)


def test_header_only_wav_is_empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio"):
        audio.decode_file(path)
