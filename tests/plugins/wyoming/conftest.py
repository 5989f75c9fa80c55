"""Helpers for the Wyoming tests: real recordings in any PCM format, the ``wyoming`` package's
own client and framing, bounded reads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import soxr
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event, async_read_event, async_write_event

from asrhub.audio import decode_file
from asrhub.testing import manifest, testdata_dir

RATE = 16000
READ_TIMEOUT = 120.0  # a bound on every read: a hung server fails the test, never hangs it

LONG = "en/pocketsphinx_librivox_ss01_0870.wav"  # 7.1 s, human reference
SHORT = "en/pocketsphinx_librivox_ss01_0880.wav"  # 3.0 s, same reader
OTHER = "en/pocketsphinx_librivox_ss01_0930.wav"  # 3.3 s
GO = "en/pocketsphinx_goforward.wav"  # 2.8 s


def load(rel: str) -> np.ndarray:
    return decode_file(testdata_dir() / rel)


def reference(rel: str) -> str:
    return manifest()[rel]["transcript"]


def quiet(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 1e-3).astype(np.float32)


def to_pcm(audio: np.ndarray, rate: int = RATE, width: int = 2, channels: int = 1) -> bytes:
    """16 kHz mono float → interleaved PCM as a client would send it (soxr for the rate; the
    channels differ in gain, so a server that took one channel only would still pass, but one
    that mixed them wrongly would not)."""
    if rate != RATE:
        audio = soxr.resample(audio, RATE, rate, quality="VHQ").astype(np.float32)
    frames = np.stack([audio * (1.0 - 0.3 * c) for c in range(channels)], axis=1)
    frames = np.clip(frames, -1.0, 1.0 - 1e-6)
    if width == 1:
        return (frames * 127 + 128).astype(np.uint8).tobytes()
    if width == 2:
        return (frames * 32767).astype("<i2").tobytes()
    if width == 4:
        return (frames * 2147483647).astype("<i4").tobytes()
    raise ValueError(width)


@dataclass
class Result:
    """What a client received, in order, and where audio-stop fell among it."""

    events: list[Event] = field(default_factory=list)
    before_stop: int = -1  # events received before audio-stop was sent
    closed: bool = False  # the server closed the connection after the events

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    @property
    def text(self) -> str:
        (transcript,) = self.of("transcript")
        return transcript.data["text"]


async def read_all(client: AsyncTcpClient, result: Result) -> None:
    """Read until the server closes the connection."""
    while True:
        event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT)
        if event is None:
            result.closed = True
            return
        result.events.append(event)


async def transcribe(port: int, pcm: bytes, *, rate: int = RATE, width: int = 2, channels: int = 1,
                     chunk_frames: int = 1024, pace: float = 0.0, language: str | None = "en",
                     name: str | None = None, context: dict | None = None,
                     pause_at: int | None = None) -> Result:
    """One transcription with the package's AsyncTcpClient, reading while it sends.

    ``pace`` sleeps between chunks; ``pause_at`` (a byte offset) stops sending there until a
    ``transcript-chunk`` has arrived (bounded by READ_TIMEOUT), then sends the rest.
    """
    result = Result()
    step = chunk_frames * width * channels
    async with AsyncTcpClient("127.0.0.1", port) as client:
        reader = asyncio.create_task(read_all(client, result))
        await client.write_event(Transcribe(name=name, language=language, context=context).event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        for offset in range(0, len(pcm), step):
            if pause_at is not None and offset <= pause_at < offset + step:
                await until(lambda: result.of("transcript-chunk") or reader.done())
            await client.write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                                audio=pcm[offset:offset + step]).event())
            if pace:
                await asyncio.sleep(pace)
        result.before_stop = len(result.events)
        await client.write_event(AudioStop().event())
        await asyncio.wait_for(reader, READ_TIMEOUT)
    return result


async def until(condition, timeout: float = READ_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


class RawClient:
    """A raw TCP client for bad input, reading the server's answers with the package's reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes | Event) -> None:
        if isinstance(data, Event):
            await async_write_event(data, self.writer)
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def answers(self) -> list[Event]:
        """Every event until the server closes the connection."""
        events = []
        while True:
            event = await asyncio.wait_for(async_read_event(self.reader), READ_TIMEOUT)
            if event is None:
                assert await asyncio.wait_for(self.reader.read(), READ_TIMEOUT) == b""
                return events
            events.append(event)

    def close(self) -> None:
        self.writer.close()
