"""Helpers for the vad_stream tests: real recordings as the wire's PCM16, and message helpers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import soundfile as sf

from asrhub.protocol import ProtocolContext, Transport
from asrhub.testing import manifest, testdata_dir

RATE = 16000
CHUNK = 640  # the seed's 20 ms of PCM16
ENGINES = {"asr": "whisper", "vad": "silero", "whisper": {"model": "tiny.en"}}

# English clips with human transcripts (NOTES.tsv) for text checks.
CLIP_NOT_ILL = "en/pocketsphinx_librivox_ss01_0880.wav"  # 3.0 s "he was not an ill disposed young man"
CLIP_GO = "en/pocketsphinx_goforward.wav"  # 2.8 s "go forward ten meters"
CLIP_AMIABLE = "en/pocketsphinx_librivox_ss01_0930.wav"  # 3.3 s "he might even have been made amiable himself"
# SPEAKER_PAIRS.tsv: spk1_snt1/spk1_snt3 same speaker, spk1_snt1/spk2_snt1 different speakers.
SPK1_ENROLL = "en/speechbrain_spk1_snt2.wav"  # 3.15 s, the one spk1 clip of at least 3 s
SPK1_TEST = "en/speechbrain_spk1_snt3.wav"
SPK2_TEST = "en/speechbrain_spk2_snt1.wav"


def samples(name: str) -> np.ndarray:
    audio, rate = sf.read(testdata_dir() / name, dtype="int16")
    assert rate == RATE and audio.ndim == 1, name
    return audio


def pcm16(name: str) -> bytes:
    return samples(name).tobytes()


def silence(seconds: float) -> bytes:
    return np.zeros(int(seconds * RATE), np.int16).tobytes()


def utterance(name: str, before: float = 0.5, after: float = 1.5) -> bytes:
    """A clip with silence around it: after it the VAD ends the segment (~0.5 s of quiet)."""
    return silence(before) + pcm16(name) + silence(after)


def transcript(name: str) -> str:
    return manifest()[name]["transcript"]


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def command(name: str, **fields: Any) -> str:
    return json.dumps({"command": name, **fields})


async def recv_json(ws, timeout: float = 60.0) -> dict:
    """The next JSON message of a ``websockets`` client."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, predicate, timeout: float = 60.0) -> list[dict]:
    """Messages up to and including the first one ``predicate`` accepts."""
    seen: list[dict] = []
    while True:
        message = await recv_json(ws, timeout)
        seen.append(message)
        if predicate(message):
            return seen


def context(hub: Any, settings: Any) -> ProtocolContext:
    """The context the core would hand vad_stream's setup (the hub must have an executor)."""
    return ProtocolContext(name="vad_stream", hub=hub, settings=settings,
                           listener=hub.listener("vad_stream").config, executor=hub.executor,
                           metrics=hub.metrics, loop_lag=hub.loop_lag, transport=Transport(hub))
