"""asrhub.container_stream: incremental decoding of webm/ogg/wav streams fed in pieces."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import stt_helpers as h

from asrhub.audio import AudioError, decode_bytes
from asrhub.container_stream import ContainerStream, sniff_container


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return h.clip_audio(h.CLIPS[0])  # 7.1 s


def test_sniff() -> None:
    assert sniff_container(b"\x1a\x45\xdf\xa3\x9f") == "matroska"
    assert sniff_container(b"OggS\x00\x02") == "ogg"
    assert sniff_container(h.wav_bytes(np.zeros(160, np.float32))) == "wav"
    assert sniff_container(b"RIFF\x00\x00\x00\x00AVI ") is None
    assert sniff_container(np.zeros(512, "<i2").tobytes()) is None
    assert sniff_container(b"") is None


def _decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asrhub-container-")]


@pytest.mark.parametrize("fmt", ["webm", "ogg"])
async def test_decodes_while_the_stream_arrives(speech: np.ndarray, fmt: str) -> None:
    chunks = h.container_chunks(speech, fmt)
    whole = decode_bytes(b"".join(c for _, c in chunks))
    got: list[tuple[float, np.ndarray]] = []
    errors: list[AudioError] = []
    stream = ContainerStream(sniff_container(chunks[0][1]) or "", lambda a: got.append((time.monotonic(), a)),
                             on_error=errors.append)
    behind = []
    for t, data in chunks:
        stream.feed(data)
        # Without an end of stream, the audio of what was fed comes out (all but the last
        # cluster/page the demuxer may still be reading): poll, however slow the machine.
        deadline = time.monotonic() + 10
        while True:
            await asyncio.sleep(0.005)
            decoded = sum(len(a) for _, a in got) / 16000
            if t - decoded < 0.35 or time.monotonic() > deadline:
                break
        behind.append(t - decoded)
    before_end = sum(len(a) for _, a in got)
    await stream.finish()
    assert not errors and stream.codec == "opus" and stream.input_rate == 48000
    audio = np.concatenate([a for _, a in got])
    # Everything arrives, and most of it before the end of the stream (incremental).
    assert abs(len(audio) - len(whole)) <= 160
    assert before_end >= len(audio) - 0.25 * 16000
    assert max(behind) < 0.35, behind
    # Same samples as decoding the whole file at once (streaming vs one-shot resampling).
    n = min(len(audio), len(whole))
    corr = np.corrcoef(audio[:n], whole[:n])[0, 1]
    assert corr > 0.99
    assert stream.join(2) and not _decoder_threads()


async def test_streamed_wav(speech: np.ndarray) -> None:
    data = h.wav_bytes(speech[:32000])
    got: list[np.ndarray] = []
    stream = ContainerStream("wav", got.append)
    for i in range(0, len(data), 1000):
        stream.feed(data[i:i + 1000])
    await stream.finish()
    audio = np.concatenate(got)
    assert len(audio) == 32000
    assert np.max(np.abs(audio - speech[:32000])) < 1e-3


async def test_garbage_after_the_magic_is_reported_once() -> None:
    errors: list[AudioError] = []
    stream = ContainerStream("matroska", lambda a: None, on_error=errors.append)
    stream.feed(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    await stream.finish()
    assert len(errors) == 1 and errors[0].reason in ("undecodable", "no_audio_stream")
    with pytest.raises(AudioError):
        stream.feed(b"more")
    assert stream.join(2)


async def test_bounded_input_and_close_frees_the_thread(speech: np.ndarray) -> None:
    chunks = h.container_chunks(speech, "webm")
    got: list[np.ndarray] = []
    stream = ContainerStream("matroska", got.append, max_pending_bytes=4096)
    stream.feed(chunks[0][1])
    with pytest.raises(AudioError) as info:
        stream.feed(b"\x00" * 5000)
    assert info.value.reason == "backlog_full"
    stream.feed(chunks[1][1])
    await asyncio.sleep(0.1)
    assert stream.running  # blocked in read(), waiting for more
    stream.close()
    assert stream.join(2) and not _decoder_threads()
    with pytest.raises(AudioError):
        stream.feed(chunks[2][1])
