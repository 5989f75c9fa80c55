"""``asrhub transcribe`` end to end: real models, real recordings, every output format."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asrhub.testing import cer_chinese, manifest, wer

ASRHUB = [str(Path(sys.executable).parent / "asrhub")]
LIBRIVOX = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0890.wav",
            "en/pocketsphinx_librivox_ss01_0920.wav"]


def run(args, tmp_path, config: str = "") -> subprocess.CompletedProcess:
    cfg = tmp_path / "asrhub.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n' + config)
    return subprocess.run([*ASRHUB, *args, "--config", str(cfg)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory):
    """One state dir for the module, so the default model is assembled once."""
    return tmp_path_factory.mktemp("cli")


@pytest.mark.slow
def test_default_model_english_wer(testdata, shared_state):
    refs = manifest()
    total_errors = 0.0
    for name in LIBRIVOX:
        result = run(["transcribe", str(testdata / name)], shared_state)
        assert result.returncode == 0, result.stderr
        score = wer(refs[name]["transcript"], result.stdout)
        assert score <= 0.25, (name, result.stdout)
        total_errors += score
    assert total_errors / len(LIBRIVOX) <= 0.12


@pytest.mark.slow
def test_default_model_mandarin_gives_simplified_chinese(testdata, shared_state):
    name = "zh/paddlespeech_zh.wav"
    result = run(["transcribe", str(testdata / name), "--language", "zh"], shared_state)
    assert result.returncode == 0, result.stderr
    assert cer_chinese(manifest()[name]["transcript"], result.stdout) <= 0.4, result.stdout
    assert "認為" not in result.stdout and "帶來" not in result.stdout  # traditional forms


def test_every_output_format(testdata, shared_state):
    name = "en/pocketsphinx_librivox_ss01_0890.wav"
    clip = testdata / name
    tiny = '[engines.whisper]\nmodel = "tiny.en"\n'
    text = run(["transcribe", str(clip), "--format", "text"], shared_state, tiny)
    assert text.returncode == 0, text.stderr
    assert wer(manifest()[name]["transcript"], text.stdout) <= 0.25, text.stdout
    data = json.loads(run(["transcribe", str(clip), "--format", "json"], shared_state, tiny).stdout)
    assert set(data) >= {"text", "language", "duration", "segments"}
    assert abs(data["duration"] - float(manifest()[name]["duration_s"])) < 0.05
    assert data["segments"] and {"start", "end", "text"} <= set(data["segments"][0])
    srt = run(["transcribe", str(clip), "--format", "srt"], shared_state, tiny).stdout
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    vtt = run(["transcribe", str(clip), "--format", "vtt"], shared_state, tiny).stdout
    assert vtt.startswith("WEBVTT\n\n00:00:0")


def test_compressed_unseen_file(testdata, tmp_path, shared_state):
    """An mp3 made from a recording (containers go through PyAV)."""
    import av
    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(testdata / "en/pocketsphinx_librivox_ss01_0930.wav", dtype="float32")
    path = tmp_path / "clip.mp3"
    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for chunk in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    result = run(["transcribe", str(path)], shared_state, '[engines.whisper]\nmodel = "tiny.en"\n')
    assert result.returncode == 0, result.stderr
    assert wer("he might even have been made amiable himself", result.stdout) <= 0.2


def test_bad_file_is_a_clear_error(tmp_path, shared_state):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio" * 100)
    result = run(["transcribe", str(junk)], shared_state)
    assert result.returncode == 2
    assert "junk.mp3" in result.stderr and "Traceback" not in result.stderr


def test_unknown_engine_is_a_clear_error(testdata, shared_state):
    result = run(["transcribe", str(testdata / "en/pocketsphinx_goforward.wav"), "--engine", "nope"],
                 shared_state)
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synthesised_speech_never_heard_before(tmp_path, shared_state):
    wav = tmp_path / "synth.wav"
    sentence = "please call stella and ask her to bring these things with her from the store"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), sentence], check=True)
    result = run(["transcribe", str(wav)], shared_state, '[engines.whisper]\nmodel = "tiny.en"\n')
    assert result.returncode == 0, result.stderr
    assert wer(sentence, result.stdout) <= 0.35, result.stdout


def test_the_threads_a_file_gets() -> None:
    """`asrhub transcribe`: every core on the one decode of a file of one piece (as the bare
    engine runs), a decode lane per core for a longer one (pieces side by side); a
    configuration that sets either key keeps its own."""
    import os

    from asrhub.cli import file_engine_threads

    cores = len(os.sched_getaffinity(0))
    assert file_engine_threads({}, 63.0, 120.0) == {"cpu_threads": cores, "num_workers": 1}
    assert file_engine_threads({}, 120.0, 120.0) == {"cpu_threads": cores, "num_workers": 1}
    assert file_engine_threads({}, 121.0, 120.0) == {"cpu_threads": 1, "num_workers": 0}
    assert file_engine_threads({}, 0.0, 120.0) == {"cpu_threads": 1, "num_workers": 0}  # unknown
    assert file_engine_threads({"num_workers": 3}, 600.0, 120.0) == {}
    assert file_engine_threads({"cpu_threads": 2}, 60.0, 120.0) == {}
