"""The OpenAI-compatible API under test: a real hub on loopback (Whisper tiny.en, Silero VAD,
Resemblyzer) driven by the official ``openai`` SDK; real recordings from testdata."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
import soxr

from asrhub.testing import make_hub, manifest, running_server, testdata_dir

RATE = 16000
TOKEN = "sk-test-asrhub"
# One LibriVox reader (human reference transcripts) and another speaker (speechbrain spk2,
# sentences whose labels agree with their phones).
READER = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
          "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
          "en/pocketsphinx_librivox_ss01_0930.wav"]
OTHER = ["en/speechbrain_spk2_snt2.wav", "en/speechbrain_spk2_snt4.wav"]
ENGINES = {"asr": "whisper", "vad": "silero", "speaker": "resemblyzer",
           "whisper": {"model": "tiny.en", "language": "en"}}
MAX_WER = 0.25


def clip(name: str, rate: int = RATE) -> np.ndarray:
    audio, sr = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != rate:
        mono = soxr.resample(mono, sr, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def joined(names: list[str], gap_s: float = 1.0, rate: int = RATE) -> np.ndarray:
    gap = np.zeros(int(gap_s * rate), np.float32)
    parts: list[np.ndarray] = []
    for name in names:
        parts += [clip(name, rate), gap]
    return np.concatenate(parts[:-1])


def reference(names: list[str]) -> str:
    rows = manifest()
    return " ".join(rows[name]["transcript"] for name in names)


def wav_bytes(audio: np.ndarray, rate: int = RATE, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype="PCM_16" if fmt == "WAV" else None)
    return buf.getvalue()


def hub_sections(**openai: Any) -> dict[str, Any]:
    return {"server": {"token": TOKEN}, "engines": dict(ENGINES),
            "protocols": {"openai_api": {"piece_seconds": 10.0, **openai}}}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Any]:
    hub = make_hub(hub_sections(), only=["openai_api"])
    async with running_server(hub, preload=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def base_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.ports['openai_api']}/v1"


@pytest.fixture
def client(base_url: str) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key=TOKEN, base_url=base_url, max_retries=0, timeout=300)
