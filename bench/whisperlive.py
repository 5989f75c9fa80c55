#!/usr/bin/env python3
"""asrhub vs WhisperLive itself: N concurrent real-time streams, same clips, same model files,
stop right after the last word; latency, WER, server CPU and peak RSS side by side in one run.

Both systems run as real servers on 127.0.0.1 and are driven over WebSocket by this process:

- **asrhub**: ``asrhub serve`` with only the streaming_stt protocol (Whisper ``--model``,
  language en, its defaults otherwise; executor workers one per stream, at least 2). One
  connection per stream; each clip is a session: ``start``, PCM int16 frames, ``stop`` sent
  right after the clip's last frame; latency = ``stop`` sent → ``final`` received.
- **WhisperLive** 0.10.0 (installed by bench/peers.py into bench/_work/wl-venv), its own
  ``run_server.py`` (../shared/peers/whisperlive/), faster_whisper backend on the same
  CTranslate2 directory (``--faster_whisper_custom_model_path``). Spoken to as its
  ``whisper_live.client.Client`` does: a new connection per clip, the options JSON of
  ``Client.on_open`` (language en, use_vad true, ``same_output_threshold``, ``no_speech_thresh``,
  send_last_n_segments 10), wait for ``SERVER_READY``, float32 frames, and ``END_OF_AUDIO``.
  The server does not flush on ``END_OF_AUDIO`` (it stops its transcription thread and
  closes), so, like its file client (``wait_before_disconnect``), this client keeps listening
  after the last frame and sends ``END_OF_AUDIO`` when the transcript is committed, or when a
  decode that started after the last frame has answered (a client's decodes run one after
  another: the second message after the end comes from one) and the text has not changed for
  ``--wl-settle`` seconds (default 15 s: its file client's ``disconnect_if_no_response_for``).
  Until then WhisperLive re-decodes the finished clip (its server commits a segment after
  ``same_output_threshold`` identical decodes): that work is in its CPU figure, as it is in
  its own use.

  WhisperLive's final, two readings (both from the end of the last frame):
  *settled* = the arrival of the last message that changed the text its client shows
  (committed segments, kept as ``Client.process_segments`` keeps them, plus the trailing
  uncommitted segment): the rule its client uses to decide the output has settled
  (``last_response_received``), and the text its ``write_srt_file`` writes. Kinder to
  WhisperLive than any other reading: later decodes that only repeat the text do not count.
  *committed* = the arrival of the message after which the whole text is in segments marked
  ``completed: true`` (what ``StreamingTranscriptionClient.on_committed_transcript`` delivers);
  sessions where that did not happen within ``--wl-settle`` s of the last change are counted.
  A settled latency can be ≤ 0 when the text was already complete before the last frame.
  The ratio column is WhisperLive settled p95 / asrhub p95.

Streams: stream *i* starts 0.37·*i* s after stream 0 with clip *i*; each clip (real English
recordings with human references, testdata/NOTES.tsv; leading and trailing quiet trimmed, so
the clip ends at its last word) is preceded by 0.3 s of silence and sent in 1024-sample frames
at real-time pace; the next clip of the stream starts 1.2 s after the previous session ended,
until ``--seconds`` of audio. The systems take turns at each N (each idle while the other
runs). CPU: the server's user+system time, children included (/proc/PID/stat), per second of
audio sent. Peak RSS: VmHWM of the server over the phase (reset through /proc/PID/clear_refs
before each phase). WER: ``asrhub.testing.wer`` of each session's final against the MANIFEST
transcript, weighted by words.

WhisperLive options: ``--wl-configs`` lists server configurations as
``omp<threads>-<single|multi|batch>`` (``multi`` = ``--no_single_model``, a model per
connection; ``single`` = one model behind a lock; ``batch`` = one model and
``--batch_inference``, its cross-session batcher, beam 1). WhisperLive decodes with beam 5
except in its batcher (not settable from its client); asrhub with beam 1. int8 on both.
The default, ``omp2-multi,omp1-multi``, is WhisperLive at its best here (tuning runs, tiny.en,
bench/results/whisperlive.md): ``single`` starves sessions at N = 4 (its model lock is not fair:
a client that releases it takes it again, so new sessions got no text for 20 s), ``batch`` gave
12-20 s finals and WAIT refusals at N = 2 on CPU, ``omp2-multi`` beat ``omp1-multi`` at N = 4
(p95 6.7 s vs 12.4 s, load ~10); both stay in the sweep because at higher N one thread per
model may win. ``--nice`` (default 0) is asrhub's ``[executor] worker_nice`` (5 in production)
and ``nice -n`` for WhisperLive: equal terms (on a loaded machine asrhub's niced decodes
otherwise lose to everything else: p95 13 s at N = 4, load ~10, against 1.1 s at nice 0).

    .venv/bin/python bench/peers.py                                   # once: install WhisperLive
    .venv/bin/python bench/whisperlive.py --model tiny.en --sweep 1,2 --seconds 20 --out -
    .venv/bin/python bench/whisperlive.py --model tiny.en --sweep 1,4,8,16 --seconds 60
    .venv/bin/python bench/whisperlive.py --model base --sweep 1,4,8 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from concurrency import CLIPS, trim_quiet  # noqa: E402
from peers import (  # noqa: E402
    WHISPERLIVE_VERSION,
    ensure_whisperlive,
    whisperlive_command,
)

from asrhub.audio import decode_file, float_to_pcm16  # noqa: E402
from asrhub.testing import free_port, manifest, testdata_dir, wer  # noqa: E402

RATE = 16000
FRAME = 1024  # samples per WebSocket frame, both systems
LEAD_S = 0.3
GAP_S = 1.2
STAGGER_S = 0.37
SESSION_TIMEOUT_S = 60.0  # a session that gives no final in this long counts as missed
SILENT_S = 20.0  # WhisperLive: give up on a session after this long without a message
DEFAULT_WL_CONFIGS = "omp2-multi,omp1-multi"


# ---------------------------------------------------------------------- clips


@dataclass
class Clip:
    name: str
    reference: str
    audio: np.ndarray  # float32, LEAD_S of silence then speech ending at the last word

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def load_clips() -> list[Clip]:
    rows = manifest()
    lead = np.zeros(int(LEAD_S * RATE), np.float32)
    return [Clip(name, rows[name]["transcript"],
                 np.concatenate([lead, trim_quiet(decode_file(testdata_dir() / name))]))
            for name in CLIPS]


def frames(audio: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(when the frame is full, seconds from the start; samples)."""
    return [((i + FRAME) / RATE if i + FRAME < len(audio) else len(audio) / RATE, audio[i:i + FRAME])
            for i in range(0, len(audio), FRAME)]


async def pace(began: float, due: float) -> None:
    wait = began + due - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


# ---------------------------------------------------------------------- sessions


@dataclass
class SessionResult:
    clip: str
    reference: str
    audio_s: float
    latency: float | None = None  # asrhub: stop → final; WhisperLive: end → settled
    committed: float | None = None  # WhisperLive: end → whole text completed
    text: str = ""
    error: str = ""

    @property
    def words(self) -> int:
        return len(self.reference.split())


async def asrhub_stream(url: str, index: int, clips: list[Clip], seconds: float,
                        deadline: float) -> list[SessionResult]:
    await asyncio.sleep(index * STAGGER_S)
    results: list[SessionResult] = []
    sent, k = 0.0, index
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.receive_json(timeout=30)  # connected
        while sent < seconds and time.monotonic() < deadline:
            clip = clips[k % len(clips)]
            k += 1
            result = SessionResult(clip.name, clip.reference, clip.seconds)
            results.append(result)
            await ws.send_str('{"command": "start", "language": "en"}')
            began = time.monotonic()
            for due, chunk in frames(clip.audio):
                await pace(began, due)
                await ws.send_bytes(float_to_pcm16(chunk))
            stopped = time.monotonic()
            await ws.send_str('{"command": "stop"}')
            sent += clip.seconds
            try:
                while True:
                    msg = await ws.receive(timeout=SESSION_TIMEOUT_S)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        result.error = f"socket {msg.type.name}"
                        return results
                    data = json.loads(msg.data)
                    if data["type"] == "final" and result.latency is None:
                        result.latency = time.monotonic() - stopped
                        result.text = data["text"]
                    elif data["type"] == "error":
                        result.error = data.get("code", "error")
                    elif data["type"] == "session_ended":
                        break
            except TimeoutError:
                result.error = "no final"
                return results
            await asyncio.sleep(GAP_S)
    return results


@dataclass
class WLOptions:
    same_output_threshold: int = 10
    no_speech_thresh: float = 0.45
    settle_s: float = 15.0  # its file client's disconnect_if_no_response_for


class WLTranscript:
    """The text WhisperLive's client shows: committed segments (kept as
    ``Client.process_segments`` keeps them: a completed segment is appended when it starts at
    or after the end of the last one) plus the trailing uncommitted segment of the latest
    message."""

    def __init__(self) -> None:
        self.committed: list[dict] = []
        self.pending: dict | None = None

    def update(self, segments: list[dict]) -> None:
        self.pending = None
        for i, seg in enumerate(segments):
            if i == len(segments) - 1 and not seg.get("completed", False):
                self.pending = seg
            elif seg.get("completed", False):
                if not self.committed or float(seg["start"]) >= float(self.committed[-1]["end"]):
                    self.committed.append(seg)

    @property
    def text(self) -> str:
        parts = [s["text"].strip() for s in self.committed]
        if self.pending is not None and self.pending["text"].strip():
            parts.append(self.pending["text"].strip())
        return " ".join(p for p in parts if p)

    @property
    def all_committed(self) -> bool:
        return bool(self.committed) and (self.pending is None or not self.pending["text"].strip())


async def whisperlive_session(url: str, clip: Clip, options: WLOptions,
                              http: aiohttp.ClientSession) -> SessionResult:
    result = SessionResult(clip.name, clip.reference, clip.seconds)
    uid = str(uuid.uuid4())
    hello = {"uid": uid, "language": "en", "task": "transcribe", "model": "custom",
             "use_vad": True, "send_last_n_segments": 10,
             "no_speech_thresh": options.no_speech_thresh, "clip_audio": False,
             "same_output_threshold": options.same_output_threshold,
             "enable_translation": False, "target_language": "fr", "hotwords": None,
             "enable_diarization": False, "max_speakers": 10, "known_speakers": [],
             "word_timestamps": False, "initial_prompt": None, "vad_parameters": None}
    for _attempt in range(40):  # WAIT (server full / admission rate): retry, bounded
        async with http.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(json.dumps(hello))
            msg = await ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT:
                result.error = f"no SERVER_READY ({msg.type.name})"
                return result
            data = json.loads(msg.data)
            if data.get("status") == "WAIT":
                await asyncio.sleep(0.5)
                continue
            if data.get("message") != "SERVER_READY":
                result.error = f"unexpected {data}"
                return result
            return await _whisperlive_audio(ws, clip, options, result)
    result.error = "server kept answering WAIT"
    return result


async def _whisperlive_audio(ws: aiohttp.ClientWebSocketResponse, clip: Clip, options: WLOptions,
                             result: SessionResult) -> SessionResult:
    transcript = WLTranscript()
    ended: list[float] = []
    after_end = 0  # messages received after the last frame
    changed = heard = time.monotonic()
    finished = asyncio.Event()

    async def receive() -> None:
        nonlocal changed, heard, after_end
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "segments" not in data or not data["segments"]:
                continue
            now = heard = time.monotonic()
            before = transcript.text
            transcript.update(data["segments"])
            if ended:
                after_end += 1
            if transcript.text != before:
                changed = now
                if ended:
                    result.latency = now - ended[0]
            if ended and transcript.all_committed and result.committed is None:
                result.committed = now - ended[0]
                finished.set()
        finished.set()

    receiver = asyncio.create_task(receive())
    began = time.monotonic()
    for due, chunk in frames(clip.audio):
        await pace(began, due)
        await ws.send_bytes(chunk.astype(np.float32).tobytes())
    ended.append(time.monotonic())
    if transcript.all_committed:  # everything committed before the end (rare)
        result.committed = 0.0
    if transcript.text:
        result.latency = changed - ended[0]  # stands if the text never changes again
    # Settled: a decode that started after the last frame has answered (decodes of a client
    # run one after another, so the second message after the end comes from one) and the
    # text has not changed for settle_s. Bounded: SESSION_TIMEOUT_S, or SILENT_S without any
    # message.
    give_up = ended[0] + SESSION_TIMEOUT_S
    while not finished.is_set() and time.monotonic() < give_up:
        now = time.monotonic()
        if after_end >= 2 and now - changed > options.settle_s:
            break
        if now - max(heard, ended[0]) > SILENT_S:
            break
        try:
            await asyncio.wait_for(finished.wait(), 0.1)
        except TimeoutError:
            pass
    result.text = transcript.text
    if not result.text:
        result.latency = None
        result.error = "no text"
    elif after_end < 2 and result.committed is None:
        result.error = f"{after_end} message(s) after the end"
    try:
        await ws.send_bytes(b"END_OF_AUDIO")
    except ConnectionError:
        pass
    receiver.cancel()
    return result


async def whisperlive_stream(url: str, index: int, clips: list[Clip], seconds: float,
                             options: WLOptions, deadline: float) -> list[SessionResult]:
    await asyncio.sleep(index * STAGGER_S)
    results: list[SessionResult] = []
    sent, k = 0.0, index
    async with aiohttp.ClientSession() as http:
        while sent < seconds and time.monotonic() < deadline:
            clip = clips[k % len(clips)]
            k += 1
            results.append(await whisperlive_session(url, clip, options, http))
            sent += clip.seconds
            await asyncio.sleep(GAP_S)
    return results


# ---------------------------------------------------------------------- servers


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    label: str  # "asrhub" or a WhisperLive configuration
    options: str  # stated next to every figure
    url: str
    proc: subprocess.Popen
    log: Path

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime (fields 14-17)
        return sum(int(x) for x in stat[11:15]) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> None:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def model_dir(name: str, state_dir: Path) -> Path:
    from asrhub_plugins.whisper.models import resolve_model

    return resolve_model(name, state_dir)


def start_asrhub(model: str, workers: int, tmp: Path, state_dir: Path, nice: int,
                 whisper: list[str] | None = None) -> Server:
    from asrhub.config import parse_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager

    port = free_port()
    others = [n for n in Hub(parse_config({}), make_plugin_manager()).protocols if n != "streaming_stt"]
    config = tmp / "asrhub.toml"
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{state_dir}"', 'log_format = "json"',
             'log_level = "warning"', "preload = true", "[executor]", f"workers = {workers}",
             f"worker_nice = {nice}",
             "[engines.whisper]", f'model = "{model}"', 'language = "en"', *(whisper or []),
             "[protocols.streaming_stt]", f"port = {port}"]
    lines += [f"[protocols.{name}]\nenabled = false" for name in others]
    config.write_text("\n".join(lines) + "\n")
    exe = shutil.which("asrhub", path=str(Path(sys.executable).parent)) or "asrhub"
    log = tmp / "asrhub.log"
    proc = subprocess.Popen([exe, "serve", "--config", str(config)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    extra = "".join(f", {line}" for line in whisper or [])
    return Server("asrhub", f"streaming_stt, {model}, beam 1, int8, executor workers {workers}, "
                  f"worker_nice {nice}{extra}, defaults otherwise", f"ws://127.0.0.1:{port}/", proc, log)


def parse_wl_config(text: str) -> tuple[int, str]:
    match = re.fullmatch(r"omp(\d+)-(single|multi|batch)", text.strip())
    if not match:
        raise SystemExit(f"--wl-configs: {text!r} is not omp<N>-<single|multi|batch>")
    return int(match.group(1)), match.group(2)


def start_whisperlive(config: str, model: str, model_path: Path, max_clients: int,
                      options: WLOptions, tmp: Path, nice: int) -> Server:
    threads, mode = parse_wl_config(config)
    port = free_port()
    cmd = whisperlive_command(port, model_path, threads, single_model=mode != "multi",
                              max_clients=max_clients, batch=mode == "batch")
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    log = tmp / f"whisperlive-{config}.log"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=tmp, preexec_fn=_die_with_parent)
    described = {"multi": "--no_single_model (a model per connection)",
                 "single": "single model (one decode at a time)",
                 "batch": "single model + --batch_inference (beam 1)"}[mode]
    beam = "beam 1" if mode == "batch" else "beam 5"
    return Server(f"WhisperLive {config}",
                  f"WhisperLive {WHISPERLIVE_VERSION}, {model}, --omp_num_threads {threads}, "
                  f"{described}, {beam}, int8, same_output_threshold "
                  f"{options.same_output_threshold}, no_speech_thresh {options.no_speech_thresh}, "
                  f"use_vad true, nice {nice}", f"ws://127.0.0.1:{port}", proc, log)


async def wait_ready(server: Server, timeout: float = 300) -> None:
    """asrhub: /health; WhisperLive: the port accepts (its model loads with the first client)."""
    deadline = time.monotonic() + timeout
    health = server.url.replace("ws://", "http://").rstrip("/") + "/health"
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise SystemExit(f"{server.label} exited: {server.log.read_text()[-2000:]}")
            try:
                if server.label == "asrhub":
                    async with http.get(health) as resp:
                        if resp.status == 200:
                            return
                else:
                    host, port = server.url.removeprefix("ws://").split(":")
                    _, writer = await asyncio.open_connection(host, int(port))
                    writer.close()
                    return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.3)
    raise SystemExit(f"{server.label} did not become ready")


async def warm_up(server: Server, clip: Clip, options: WLOptions) -> None:
    """One session so that model loading is not in the first phase."""
    if server.label == "asrhub":
        await asrhub_stream(server.url, 0, [clip], 0.1, time.monotonic() + 120)
    else:
        async with aiohttp.ClientSession() as http:
            await whisperlive_session(server.url, clip, options, http)


# ---------------------------------------------------------------------- phases


@dataclass
class Phase:
    server: Server
    streams: int
    sessions: list[SessionResult]
    cpu_s: float
    peak_rss: float
    wall_s: float

    @property
    def audio_s(self) -> float:
        return sum(s.audio_s for s in self.sessions)

    def pct(self, q: float, attr: str = "latency") -> float:
        values = [getattr(s, attr) for s in self.sessions if getattr(s, attr) is not None]
        return float(np.percentile(values, q)) if values else float("nan")

    def missing(self, attr: str = "latency") -> int:
        return sum(getattr(s, attr) is None for s in self.sessions)

    @property
    def wer(self) -> float:
        words = sum(s.words for s in self.sessions)
        return sum(wer(s.reference, s.text) * s.words for s in self.sessions) / max(1, words)

    @property
    def errors(self) -> list[str]:
        return [f"{s.clip}: {s.error}" for s in self.sessions if s.error]


async def run_phase(server: Server, streams: int, clips: list[Clip], seconds: float,
                    options: WLOptions) -> Phase:
    server.reset_peak()
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    deadline = started + seconds * 3 + 120  # no new session after this (bounded run)
    if server.label == "asrhub":
        runs = [asrhub_stream(server.url, i, clips, seconds, deadline) for i in range(streams)]
    else:
        runs = [whisperlive_stream(server.url, i, clips, seconds, options, deadline)
                for i in range(streams)]
    results = await asyncio.gather(*runs)
    wall = time.monotonic() - started
    await asyncio.sleep(0.5)
    return Phase(server, streams, [s for r in results for s in r], server.cpu_seconds() - cpu_before,
                 server.peak_rss_mib(), wall)


# ---------------------------------------------------------------------- report

HEADER = ("| N | system | sessions | no final | final p50 s | final p95 s | final max s "
          "| WhisperLive committed p50 / p95 s (not committed) | WER | CPU s / audio s "
          "| peak RSS MiB | p95 ratio WhisperLive / asrhub |")


def row(phase: Phase, hub: Phase | None) -> str:
    is_hub = phase.server.label == "asrhub"
    committed = "—"
    if not is_hub:
        missing = phase.missing("committed")
        committed = (f"{phase.pct(50, 'committed'):.2f} / {phase.pct(95, 'committed'):.2f} ({missing})"
                     if missing < len(phase.sessions) else f"— ({missing})")
    ratio = "—" if is_hub or hub is None else f"{phase.pct(95) / hub.pct(95):.2f}×"
    return (f"| {phase.streams} | {phase.server.label} | {len(phase.sessions)} | {phase.missing()} "
            f"| {phase.pct(50):.2f} | {phase.pct(95):.2f} | {phase.pct(100):.2f} | {committed} "
            f"| {phase.wer:.3f} | {phase.cpu_s / max(phase.audio_s, 1e-9):.3f} "
            f"| {phase.peak_rss:.0f} | {ratio} |")


@dataclass
class Run:
    model: str
    command: str
    started: str
    uptime_before: str
    uptime_after: str = ""
    servers: list[Server] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    preliminary: bool = False


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def section(run: Run) -> str:
    title = f"## Whisper {run.model}" + (" (preliminary: short, machine shared)" if run.preliminary else "")
    lines = [title, "", f"{run.started} · asrhub {commit()} · {platform.machine()} · "
             f"{os.cpu_count()} cores · Python {platform.python_version()}", "",
             f"- `uptime` before: `{run.uptime_before}`", f"- `uptime` after: `{run.uptime_after}`",
             "", "```", run.command, "```", "", "Systems and their options:", ""]
    lines += [f"- **{s.label}**: {s.options}" for s in run.servers]
    lines += ["", HEADER, "|" + "---|" * (HEADER.count(" | ") + 1)] + run.rows
    if run.errors:
        lines += ["", "Session errors:", *[f"- {e}" for e in run.errors[:40]]]
    return "\n".join(lines) + "\n"


FILE_HEADER = """# asrhub vs WhisperLive (bench/whisperlive.py)

N concurrent real-time streams against each server on 127.0.0.1, same clips (real English
recordings with human references, quiet trimmed so each ends at its last word, 0.3 s of
silence before it, 1024-sample frames at real-time pace, the next clip 1.2 s after the
previous session ended), same CTranslate2 model directory. **asrhub**: streaming_stt on
`asrhub serve`, `stop` right after the last frame, final = `stop` → `final`. **WhisperLive**
0.10.0 (`bench/peers.py` installs it; its own `run_server.py`): its client protocol (options
JSON, float32 frames, `END_OF_AUDIO`), a connection per clip; its server does not flush on
`END_OF_AUDIO`, so the client listens on after the last frame, as its file client does
(until the text is committed or has not changed for 15 s), WhisperLive re-decoding meanwhile.
WhisperLive's final = *settled*: end of the last frame → the last message that changed the text
its client shows (committed segments + the trailing uncommitted one: what its client writes),
the kindest reading; *committed*: → the whole text in `completed: true` segments. CPU: server
user+system seconds (children included) per audio second (2 cores = 2 s per s); peak RSS:
the server's VmHWM during the phase. WER: `asrhub.testing.wer` against MANIFEST, weighted by
words. The ratio column: WhisperLive settled p95 / asrhub p95 at the same N. The systems take
turns; every figure sits next to the options it was measured with (below each table).

"""


def write_results(path: Path, run: Run) -> None:
    """Replace this model's section (preliminary or not) or add it; keep the others."""
    old = path.read_text() if path.exists() else ""
    sections = [m.group(0).rstrip() + "\n" for m in re.finditer(r"^## .*?(?=^## |\Z)", old, re.M | re.S)]
    new = section(run)
    key = new.splitlines()[0]
    kept = [s for s in sections if s.splitlines()[0] != key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FILE_HEADER + "\n".join(kept + [new]))


# ---------------------------------------------------------------------- main


async def measure(args: argparse.Namespace, counts: list[int], run: Run) -> None:
    options = WLOptions(args.same_output_threshold, args.no_speech_thresh, args.wl_settle)
    clips = load_clips()
    state_dir = Path(args.state_dir)
    path = model_dir(args.model, state_dir)
    with tempfile.TemporaryDirectory(prefix="asrhub-wl-bench-") as tmp_name:
        tmp = Path(args.log_dir or tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        servers: list[Server] = []
        try:
            if "asrhub" in args.systems:
                servers.append(start_asrhub(args.model, args.workers or max(2, max(counts)), tmp,
                                            state_dir, args.nice, args.whisper))
            for config in args.wl_configs:
                servers.append(start_whisperlive(config, args.model, path, max(counts) + 4,
                                                 options, tmp, args.nice))
            run.servers = servers
            for server in servers:
                await wait_ready(server)
                await warm_up(server, clips[0], options)
                print(f"ready: {server.label}: {server.options}", flush=True)
            print(HEADER, flush=True)
            for count in counts:
                hub: Phase | None = None
                for server in servers:
                    phase = await run_phase(server, count, clips, args.seconds, options)
                    if server.label == "asrhub":
                        hub = phase
                    line = row(phase, hub)
                    run.rows.append(line)
                    run.errors += [f"N={count} {server.label}: {e}" for e in phase.errors]
                    print(line, flush=True)
                    if args.verbose:
                        for s in phase.sessions:
                            print(f"    {s.clip} latency {s.latency} committed {s.committed} "
                                  f"{s.error} {s.text!r}")
                    await asyncio.sleep(1.0)
        finally:
            for server in servers:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en", help="tiny.en or base")
    parser.add_argument("--sweep", default="1,4", help="stream counts, e.g. 1,4,8,16")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream and phase")
    parser.add_argument("--systems", default="asrhub,whisperlive", help="asrhub, whisperlive or both")
    parser.add_argument("--wl-configs", default=DEFAULT_WL_CONFIGS,
                        help=f"WhisperLive server configurations (default {DEFAULT_WL_CONFIGS})")
    parser.add_argument("--same-output-threshold", type=int, default=10,
                        help="WhisperLive client option (its default 10)")
    parser.add_argument("--no-speech-thresh", type=float, default=0.45,
                        help="WhisperLive client option (its default 0.45)")
    parser.add_argument("--wl-settle", type=float, default=15.0,
                        help="WhisperLive: END_OF_AUDIO when the text is committed or has not "
                             "changed for this long (default 15: its file client's "
                             "disconnect_if_no_response_for)")
    parser.add_argument("--workers", type=int, default=0,
                        help="asrhub [executor] workers (default: one per stream, at least 2)")
    parser.add_argument("--whisper", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra [engines.whisper] line for asrhub (TOML), e.g. "
                             "--whisper 'partial_interval = 2.0'; repeatable")
    parser.add_argument("--nice", type=int, default=0,
                        help="asrhub's [executor] worker_nice (5 in production) and `nice -n` for "
                             "WhisperLive: the same for both (default 0)")
    parser.add_argument("--state-dir", default=str(ROOT / "bench" / "_work" / "state"),
                        help="asrhub state dir (where 'base' is assembled once)")
    parser.add_argument("--out", default=str(BENCH / "results" / "whisperlive.md"),
                        help="results file ('-' = none); this model's section is replaced")
    parser.add_argument("--preliminary", action="store_true",
                        help="title the section preliminary (a short run on a shared machine)")
    parser.add_argument("--verbose", action="store_true", help="print every session")
    parser.add_argument("--log-dir", default="", help="keep the servers' configs and logs here")
    args = parser.parse_args()
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    args.systems = systems
    args.wl_configs = ([c.strip() for c in args.wl_configs.split(",") if c.strip()]
                       if "whisperlive" in systems else [])
    for config in args.wl_configs:
        parse_wl_config(config)
    counts = [int(n) for n in args.sweep.split(",") if n.strip()]
    if args.wl_configs:
        ensure_whisperlive()
    run = Run(args.model, ".venv/bin/python " + shlex.join(["bench/whisperlive.py", *sys.argv[1:]]),
              datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), uptime(),
              preliminary=args.preliminary)
    print(f"model {args.model}, {args.seconds:.0f} s per stream, N {counts}; {run.uptime_before}",
          flush=True)
    asyncio.run(measure(args, counts, run))
    run.uptime_after = uptime()
    print(f"uptime after: {run.uptime_after}")
    for error in run.errors:
        print("  " + error)
    if args.out != "-":
        write_results(Path(args.out), run)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
