"""FunASR runtime protocol tests: a real ``asrhub serve`` process and FunASR's own Python client
(``shared/peers/funasr-runtime/funasr_wss_client.py``, run unchanged as a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrhub.config import parse_config
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.testing import free_port, manifest, testdata_dir

PROTOCOL = "funasr_runtime"
# English clips with human references (shared/testdata/NOTES.tsv).
READER = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
          "en/pocketsphinx_librivox_ss01_0930.wav"]
OTHER = "en/speechbrain_example1.wav"


def peer_client() -> Path:
    """FunASR's client, from shared/peers beside the test data."""
    path = testdata_dir().parent / "peers" / "funasr-runtime" / "funasr_wss_client.py"
    if not path.is_file():
        pytest.skip(f"FunASR's client not found at {path}")
    return path


def reference(name: str) -> str:
    return manifest()[name]["transcript"]


def write_config(tmp: Path, port: int, extra: list[str] | None = None,
                 listener: list[str] | None = None) -> Path:
    others = [name for name in Hub(parse_config({}), make_plugin_manager()).protocols
              if name != PROTOCOL]
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{tmp / "state"}"',
             'log_format = "json"', "[executor]", "workers = 2",
             *(extra or ["[engines]", 'asr = "whisper"', 'vad = "silero"',
                         "[engines.whisper]", 'model = "tiny.en"', 'language = "en"']),
             f"[protocols.{PROTOCOL}]", f"port = {port}", *(listener or [])]
    lines += [f"[protocols.{name}]\nenabled = false" for name in others]
    path = tmp / "asrhub.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Serve:
    """``asrhub serve --config <toml>`` as a child process, ready once /health says so."""

    def __init__(self, config: Path, port: int, log: Path, *, tls: bool = False) -> None:
        self.config, self.port, self.log, self.tls = config, port, log, tls
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        exe = shutil.which("asrhub", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "asrhub.cli"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*cmd, "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            scheme = "https" if self.tls else "http"
            context = ssl._create_unverified_context() if self.tls else None
            try:  # ready = the engines are loaded (the port listens before that)
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health",
                                            timeout=2, context=context):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the server did not start: " + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def summaries(self) -> list[dict]:
        """The session_closed lines of the server's JSON log."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"session_closed"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("funasr-runtime-serve")
    port = free_port()
    server = Serve(write_config(tmp, port), port, tmp / "serve.log")
    server.start()
    yield server
    server.stop()


@dataclass
class ClientRun:
    returncode: int
    output: str  # the client's stdout and stderr
    lines: list[tuple[str, str, str]]  # --output_dir text.*: (wav_name, text, timestamp)
    events: list[dict]  # --log_dir meeting_*/events.jsonl: every message the client got

    def texts(self, mode: str, wav_name: str | None = None) -> list[str]:
        return [e["text"] for e in self.events if e["mode"] == mode and e["text"]
                and (wav_name is None or e["wav_name"] == wav_name)]

    def joined(self, mode: str, wav_name: str) -> str:
        """What the client shows for ``wav_name``: the pieces of ``mode`` concatenated."""
        return "".join(self.texts(mode, wav_name))


def run_client(tmp: Path, port: int, audio_in: Path, mode: str, *, fast: bool,
               threads: int = 1, extra: list[str] | None = None, timeout: float = 600,
               tls: bool = False) -> ClientRun:
    """Run FunASR's client unchanged; its output files go under ``tmp``."""
    out, logs = tmp / f"out-{mode}", tmp / f"logs-{mode}"
    cmd = [sys.executable, str(peer_client()), "--host", "127.0.0.1", "--port", str(port),
           "--ssl", "1" if tls else "0", "--mode", mode, "--audio_in", str(audio_in),
           "--thread_num", str(threads), "--output_dir", str(out), "--log_dir", str(logs),
           "--result_timeout", "240", *(["--send_without_sleep"] if fast else []), *(extra or [])]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[tuple[str, str, str]] = []
    for path in sorted(out.glob("text.*")) if out.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            name, text, *rest = line.split("\t") + [""]
            lines.append((name, text, rest[0] if rest else ""))
    events: list[dict] = []
    for path in sorted(logs.glob("meeting_*/events.jsonl")) if logs.is_dir() else []:
        events += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return ClientRun(proc.returncode, proc.stdout + proc.stderr, lines, events)


def scp(tmp: Path, names: list[str], filename: str = "wav.scp") -> Path:
    """A Kaldi-style list (``wav_name path``), what the client takes for --thread_num > 1."""
    path = tmp / filename
    path.write_text("".join(f"{Path(n).stem} {testdata_dir() / n}\n" for n in names))
    return path


def read16k(name: str) -> np.ndarray:
    audio, rate = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    assert rate == 16000, name
    return audio.mean(axis=1).astype(np.float32)


def joined_clips(names: list[str], gap_s: float = 1.2) -> np.ndarray:
    gap = np.zeros(int(gap_s * 16000), np.float32)
    parts: list[np.ndarray] = []
    for name in names:
        parts += [read16k(name), gap]
    return np.concatenate(parts)
