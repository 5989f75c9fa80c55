"""End to end against a real ``asrhub serve`` process (only the Wyoming listener, Whisper
tiny.en, Silero VAD) with the ``wyoming`` package's own AsyncTcpClient: describe, a full
transcription of a real recording, streaming transcript chunks before audio-stop, 8 kHz and
44.1 kHz stereo input, and bad input that ends only its own connection."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from wyoming.asr import Transcript, TranscriptChunk
from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from asrhub.config import parse_config
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.testing import free_port, wer

from .conftest import (
    GO,
    LONG,
    OTHER,
    READ_TIMEOUT,
    SHORT,
    RawClient,
    load,
    quiet,
    reference,
    to_pcm,
    transcribe,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
MAX_WER = 0.2


def write_config(tmp: Path, port: int) -> Path:
    others = [name for name in Hub(parse_config({}), make_plugin_manager()).protocols
              if name != "wyoming"]
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{tmp / "state"}"',
             'log_format = "json"',
             "[engines]", 'asr = "whisper"', 'vad = "silero"',
             "[engines.whisper]", 'model = "tiny.en"',
             "[protocols.wyoming]", f"port = {port}", "max_message_bytes = 65536"]
    lines += [f"[protocols.{name}]\nenabled = false" for name in others]
    path = tmp / "asrhub.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serve(tmp_path_factory):
    """``asrhub serve`` as a child process; yields its port once it answers ``describe``."""
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = tmp / "serve.log"
    exe = shutil.which("asrhub", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "asrhub.cli"]
    with log.open("ab") as out:
        proc = subprocess.Popen([*cmd, "serve", "--config", str(write_config(tmp, port))],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        info = None
        while info is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not serving: " + log.read_text()[-3000:]
            try:
                async with AsyncTcpClient("127.0.0.1", port) as client:
                    await client.write_event(Describe().event())
                    event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT)
                    info = Info.from_event(event) if event is not None else None
            except OSError:
                await asyncio.sleep(0.3)
        yield port, info, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_describe(serve):
    _, info, _ = serve
    (program,) = info.asr
    assert program.name == "whisper" and program.installed
    assert program.supports_transcript_streaming
    (model,) = program.models
    assert model.name == "tiny.en" and model.languages == ["en"]


async def test_full_transcription_of_a_recording(serve):
    port, _, _ = serve
    # Home Assistant's shape: 1024-sample chunks of 16 kHz mono int16, then audio-stop
    result = await transcribe(port, to_pcm(np.concatenate([load(LONG), quiet(0.5)])))
    assert result.closed  # one transcription per connection, as the reference server
    transcript = Transcript.from_event(result.of("transcript")[0])
    assert transcript.language == "en"
    assert wer(reference(LONG), transcript.text) <= MAX_WER, transcript.text


async def test_transcript_chunks_arrive_before_audio_stop(serve):
    port, _, _ = serve
    first = np.concatenate([load(LONG), quiet(1.5)])
    audio = np.concatenate([first, load(SHORT), quiet(0.5)])
    # Sending stops after the pause until a transcript-chunk has come (bounded wait), so the
    # test shows the chunk is not waiting for audio-stop.
    result = await transcribe(port, to_pcm(audio), pause_at=len(to_pcm(first)) - 1)
    types = result.types()
    assert types[0] == "transcript-start"
    assert "transcript-chunk" in types[:result.before_stop]
    assert types[-2:] == ["transcript", "transcript-stop"]
    assert types.index("transcript") > max(i for i, t in enumerate(types) if t == "transcript-chunk")
    chunks = [TranscriptChunk.from_event(e).text for e in result.of("transcript-chunk")]
    assert "".join(chunks) == result.text  # chunks add up to the transcript
    early = "".join(chunks[:sum(1 for t in types[:result.before_stop] if t == "transcript-chunk")])
    assert wer(reference(LONG), early) <= MAX_WER, early
    assert wer(reference(LONG) + " " + reference(SHORT), result.text) <= MAX_WER, result.text


@pytest.mark.parametrize("rate, width, channels", [(8000, 2, 1), (44100, 2, 2)])
async def test_other_rates_and_channels(serve, rate, width, channels):
    port, _, _ = serve
    audio = np.concatenate([load(OTHER), quiet(0.5)])
    pcm = to_pcm(audio, rate, width, channels)
    result = await transcribe(port, pcm, rate=rate, width=width, channels=channels,
                              chunk_frames=rate // 16)
    assert wer(reference(OTHER), result.text) <= MAX_WER, result.text


async def test_bad_input_ends_only_its_own_connection(serve):
    port, _, log = serve
    healthy_audio = to_pcm(np.concatenate([load(LONG), quiet(0.5)]))
    # A healthy client streams in real time (64 ms chunks) while bad clients come and go.
    healthy = asyncio.create_task(transcribe(port, healthy_audio, pace=0.064))

    async def bad(*sends: bytes | Event) -> Error:
        client = await RawClient.connect(port)
        try:
            for data in sends:
                await client.send(data)
            said = await client.answers()  # read to the end: the server closes the connection
        finally:
            client.close()
        (error,) = [Error.from_event(e) for e in said if e.type == "error"]
        return error

    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0" * 512).event()
    malformed = await bad(b"{\"type\": \"describe\"\n")
    oversized = await bad(b"{\"type\": \"audio-chunk\", \"data\": {\"rate\": 16000, \"width\": 2, "
                          b"\"channels\": 1}, \"payload_length\": 1000000}\n" + b"\0" * 4096)
    early = await bad(chunk)
    garbage = await bad(b"\x00\xff" * 3000 + b"\n")
    assert malformed.code == "bad_event"
    assert oversized.code == "too_big" and "65536" in oversized.text
    assert early.code == "audio_not_started"
    assert garbage.code == "bad_event"
    result = await asyncio.wait_for(healthy, READ_TIMEOUT)
    assert wer(reference(LONG), result.text) <= MAX_WER, result.text
    assert result.closed
    # each bad connection was logged with its reason
    text = log.read_text()
    assert text.count('"bad_frame"') >= 3 and "audio-chunk before audio-start" in text
    # and the server still serves
    again = await transcribe(port, to_pcm(np.concatenate([load(GO), quiet(0.5)])))
    assert wer(reference(GO), again.text) <= MAX_WER
