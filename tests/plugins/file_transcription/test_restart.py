"""Durability: ``asrhub serve`` (a real process, only this protocol) is killed with SIGKILL while
it transcribes a file and while a chunked upload is half done; after a restart the task
completes, the upload resumes, and after another restart the result is still there."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asrhub.config import parse_config
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.testing import free_port, wer

from .conftest import (
    OTHER,
    READER,
    RawClient,
    chunk_msg,
    data_msg,
    joined,
    md5,
    msg,
    reference,
    upload_request,
    write_wav,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
MAX_WER = 0.25


def write_config(tmp: Path, port: int) -> Path:
    others = [name for name in Hub(parse_config({}), make_plugin_manager()).protocols
              if name != "file_transcription"]
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{tmp / "state"}"', 'log_format = "json"',
             "[engines]", 'asr = "whisper"', 'vad = "silero"', 'speaker = "resemblyzer"',
             "[engines.whisper]", 'model = "tiny.en"', 'language = "en"',
             "[protocols.file_transcription]", f"port = {port}"]
    lines += [f"[protocols.{name}]\nenabled = false" for name in others]
    path = tmp / "asrhub.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Serve:
    """``asrhub serve --config <toml>`` as a child process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        exe = shutil.which("asrhub", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "asrhub.cli"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*cmd, "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                client = await RawClient.connect(self.url)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            await client.close()
            return
        raise AssertionError("the server did not start: " + self.log.read_text()[-3000:])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def test_kill_9_during_transcription_then_resume(tmp_path):
    port = free_port()
    server = Serve(write_config(tmp_path, port), port, tmp_path / "serve.log")
    long_names = [*READER, *OTHER, *READER]
    long_file = write_wav(tmp_path / "long.wav", joined(long_names, gap_s=0.5)).read_bytes()
    half_names = [READER[3], READER[4]]
    half_file = write_wav(tmp_path / "half.wav", joined(half_names, gap_s=0.5)).read_bytes()
    size = 50_000
    try:
        await server.start()
        # A chunked upload left half done...
        uploader = await RawClient.connect(server.url)
        ready = await uploader.ask(upload_request(half_file, "half.wav", chunk_size=size))
        upload_id = ready["data"]["task_id"]
        total = ready["data"]["total_chunks"]
        for index in (0, 1):
            assert (await uploader.ask(chunk_msg(upload_id, half_file, index, size)))["type"] == "chunk_received"
        # ... and a file being transcribed when the process is killed.
        client = await RawClient.connect(server.url)
        ready = await client.ask(upload_request(long_file, "long.wav"))
        task_id = ready["data"]["task_id"]
        assert (await client.ask(data_msg(task_id, long_file)))["type"] == "upload_complete"
        while True:
            message = await client.recv(120)
            assert message["type"] not in ("task_complete", "error"), message
            if message["type"] == "task_progress" and message["data"]["message"] == "正在转录音频...":
                break
        server.kill()
        assert server.proc is not None and server.proc.returncode == -signal.SIGKILL

        await server.start()
        client = await RawClient.connect(server.url)
        status = await client.ask(msg("task_status", task_id=task_id))
        assert status["type"] == "task_status" and status["data"]["status"] in ("queued", "running")
        done, _ = await client.until("task_complete", timeout=300)
        text = done["data"]["result"]["text"]
        assert wer(reference(*long_names), text) <= MAX_WER
        assert len(done["data"]["result"]["speakers"]) == 2
        # The half-done upload continues where it stopped.
        resumed = await client.ask(msg("upload_resume", task_id=upload_id))
        assert resumed["type"] == "upload_ready" and resumed["data"]["received_chunks"] == [0, 1]
        for index in range(2, total):
            ack = await client.ask(chunk_msg(upload_id, half_file, index, size))
            assert ack["type"] == "chunk_received" and ack["data"]["status"] == "received"
        finished, before = await client.until("task_complete", timeout=300)
        assert before[0]["type"] == "upload_complete"
        assert wer(reference(*half_names), finished["data"]["result"]["text"]) <= MAX_WER
        await client.close()
        server.stop()
        assert server.proc is not None and server.proc.returncode == 0

        # After a clean restart the results are still there, by task_id and by file hash.
        await server.start()
        client = await RawClient.connect(server.url)
        status = await client.ask(msg("task_status", task_id=task_id))
        assert status["data"]["status"] == "completed" and status["data"]["progress"] == 100.0
        again = await client.recv()
        assert again["type"] == "task_complete" and again["data"]["result"]["text"] == text
        cached = await client.ask(upload_request(long_file, "same.wav"))
        assert cached["type"] == "task_complete" and cached["data"]["result"]["text"] == text
        # Issue 18 (1): the known MD5 with file_size 1 and no data gets no transcript.
        attack = await client.ask(msg("upload_request", file_name="x.wav", file_size=1,
                                      file_hash=md5(long_file)))
        assert attack["type"] == "upload_ready" and attack["data"]["task_id"] != task_id
        refused = await client.ask(data_msg(attack["data"]["task_id"], b"x"))
        assert refused["type"] == "error" and refused["data"]["error"] == "hash_mismatch"
        await client.close()
        spool = tmp_path / "state" / "file_transcription" / "uploads"
        assert not any(spool.iterdir()), "finished uploads are removed from the spool"
        # Issue 18 (13): the state the server created is private.
        for path in (tmp_path / "state" / "file_transcription", spool):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    finally:
        server.stop()
    log = (tmp_path / "serve.log").read_text()
    assert '"event": "file_task_resumed"' in log
    assert os.path.getsize(tmp_path / "state" / "file_transcription" / "tasks.sqlite3") > 0
