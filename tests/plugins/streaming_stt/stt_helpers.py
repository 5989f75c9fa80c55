"""Audio and pacing helpers for the streaming STT tests (real recordings, real encoders)."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from asrhub.audio import decode_file, float_to_pcm16
from asrhub.testing import manifest, testdata_dir

# English clips with human references (NOTES.tsv), ~20 s together.
CLIPS = [
    "en/pocketsphinx_librivox_ss01_0870.wav",  # 7.1 s
    "en/speechbrain_example1.wav",  # 3.3 s
]


def clip_path(name: str) -> Path:
    return testdata_dir() / name


def transcript(name: str) -> str:
    return manifest()[name]["transcript"]


def clip_audio(name: str) -> np.ndarray:
    return decode_file(clip_path(name))


def with_pauses(parts: list[np.ndarray], pause_s: float = 1.0, lead_s: float = 0.3) -> np.ndarray:
    """Recordings one after another with silence between: a multi-utterance session."""
    gap = np.zeros(int(pause_s * 16000), np.float32)
    pieces = [np.zeros(int(lead_s * 16000), np.float32)]
    for part in parts:
        pieces += [part, gap]
    return np.concatenate(pieces)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(float_to_pcm16(audio))
    return path


def pcm_chunks(audio: np.ndarray, samples: int = 1024) -> list[tuple[float, bytes]]:
    """(audio time at the end of the chunk, PCM int16 LE bytes), like pyaudio's reads."""
    data = float_to_pcm16(audio)
    step = samples * 2
    return [(min(len(data), i + step) / 32000, data[i:i + step]) for i in range(0, len(data), step)]


def container_chunks(audio: np.ndarray, fmt: str = "webm", chunk_s: float = 0.1) -> list[tuple[float, bytes]]:
    """Encode with Opus (48 kHz, like MediaRecorder) into a live webm/ogg stream, cut into the
    pieces the muxer wrote about every ``chunk_s`` of audio: (audio time, bytes)."""
    import av

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, b: bytes) -> int:
            self.data += b
            return len(b)

    sink = Sink()
    options = ({"live": "1", "cluster_time_limit": str(int(chunk_s * 1000))} if fmt == "webm"
               else {"page_duration": str(int(chunk_s * 1e6))})
    out = av.open(sink, mode="w", format=fmt, options=options)
    stream = out.add_stream("libopus", rate=48000)
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(
        np.clip(audio * 32767, -32768, 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    marks: list[tuple[float, int]] = []
    encoded = 0.0

    def mux(packets) -> None:
        nonlocal encoded
        for packet in packets:
            encoded += (packet.duration or 960) / 48000
            out.mux(packet)
            marks.append((encoded, len(sink.data)))

    for f in resampler.resample(frame):
        mux(stream.encode(f))
    mux(stream.encode(None))
    out.close()
    marks.append((encoded, len(sink.data)))
    chunks, sent, due = [], 0, chunk_s
    for t, size in marks:
        if (t >= due or (t, size) == marks[-1]) and size > sent:
            chunks.append((min(t, len(audio) / 16000), bytes(sink.data[sent:size])))
            sent, due = size, t + chunk_s
    return chunks


async def send_paced(send: Callable[[bytes], Awaitable[None]], chunks: list[tuple[float, bytes]],
                     speed: float = 1.0) -> float:
    """Send each chunk when its audio would have been recorded (``speed`` x real time).
    Returns the monotonic time the last chunk went out."""
    start = time.monotonic()
    for t, data in chunks:
        delay = start + t / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(data)
    return time.monotonic()


def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(float_to_pcm16(audio))
    return buf.getvalue()


def seed_examples() -> dict[str, str]:
    """The client examples of the seed (streaming-stt-8765.md), verbatim: "js", "asyncio",
    "simple". The seed lives in shared/seeds beside shared/testdata."""
    import re

    seed = testdata_dir().parent / "seeds" / "streaming-stt-8765.md"
    blocks = [code for _, code in re.findall(r"```(\w+)\n(.*?)```", seed.read_text(), re.S)
              if "StreamingSTTClient" in code or "async def streaming_transcribe" in code]
    js, asyncio_class, simple = blocks
    assert js.startswith("class StreamingSTTClient") and "pyaudio" in asyncio_class + simple
    return {"js": js, "asyncio": asyncio_class, "simple": simple}


class Recorder:
    """Collects a client's messages with their arrival time (monotonic)."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict]] = []

    def add(self, message: dict) -> None:
        self.messages.append((time.monotonic(), message))

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(t, x) for t, x in self.messages if x["type"] == kind]

    def types(self) -> list[str]:
        return [x["type"] for _, x in self.messages]
