"""A real ``asrhub serve`` process (only this protocol, the multilingual Whisper base model, a
token) answering the official SDK: Chinese speech translated to English, a transcription, the
default 25 MB limit, garbage bytes and a wrong key."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from asrhub.config import parse_config
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.testing import free_port, testdata_dir, wer

from .conftest import MAX_WER, READER, TOKEN, joined, reference, wav_bytes

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
CJK = re.compile(r"[\u4e00-\u9fff]")


def write_config(tmp: Path, port: int) -> Path:
    others = [name for name in Hub(parse_config({}), make_plugin_manager()).protocols
              if name != "openai_api"]
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{tmp / "state"}"',
             'log_format = "json"', f'token = "{TOKEN}"',
             "[engines]", 'asr = "whisper"', 'vad = "silero"', 'speaker = "resemblyzer"',
             "[engines.whisper]", 'model = "base"',
             "[protocols.openai_api]", f"port = {port}"]
    lines += [f"[protocols.{name}]\nenabled = false" for name in others]
    path = tmp / "asrhub.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def serve(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    tmp = tmp_path_factory.mktemp("openai-serve")
    port = free_port()
    config = write_config(tmp, port)
    exe = shutil.which("asrhub", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "asrhub.cli"]
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([*cmd, "serve", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        client = AsyncOpenAI(api_key=TOKEN, base_url=base, max_retries=0)
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            try:
                await client.models.list()
                break
            except openai.APIConnectionError:
                await asyncio.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def client(serve: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=TOKEN, base_url=serve, max_retries=0, timeout=300)


async def test_translation_of_chinese_speech(client) -> None:
    data = (testdata_dir() / "zh" / "funasr_csharp_example_1.wav").read_bytes()
    result = await client.audio.translations.create(model="whisper-1", file=("zh.wav", data),
                                                    response_format="verbose_json")
    assert result.language == "english" and result.segments
    assert not CJK.search(result.text), result.text
    words = re.findall(r"[A-Za-z']+", result.text.lower())
    assert len(words) >= 10 and "justice" in words, result.text
    # The same file transcribed: Chinese.
    transcript = await client.audio.transcriptions.create(model="whisper-1", file=("zh.wav", data))
    assert len(CJK.findall(transcript.text)) >= 20, transcript.text
    mixed = (testdata_dir() / "zh-en" / "funasr_csharp_example_3.wav").read_bytes()
    text = await client.audio.translations.create(model="whisper-1", file=("mixed.wav", mixed),
                                                  response_format="text")
    assert not CJK.search(text) and "light" in text.lower(), text


async def test_transcription_and_models(client) -> None:
    result = await client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("en.wav", wav_bytes(joined(READER[:3]))))
    assert wer(reference(READER[:3]), result.text) <= MAX_WER, result.text
    ids = {m.id async for m in client.models.list()}
    assert {"whisper-1", "whisper"} <= ids


async def test_default_limit_is_25_mb(client) -> None:
    big = wav_bytes(np.zeros(13_200_000, np.float32))  # 26.4 MB of WAV
    assert len(big) > 25 * 1024 * 1024
    with pytest.raises(openai.APIStatusError) as info:
        await client.audio.transcriptions.create(model="whisper-1", file=("big.wav", big))
    assert info.value.status_code == 413


async def test_garbage_and_wrong_key(client, serve) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(model="whisper-1",
                                                 file=("x.m4a", b"\x00\x01garbage" * 999))
    assert info.value.status_code == 400 and info.value.code == "invalid_file_format"
    with pytest.raises(openai.AuthenticationError):
        await AsyncOpenAI(api_key="nope", base_url=serve, max_retries=0).models.list()
