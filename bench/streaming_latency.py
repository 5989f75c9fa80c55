#!/usr/bin/env python3
"""Streaming STT latency under load: N concurrent real-time streams against a real asrhub.

Starts ``asrhub serve`` itself (only the streaming_stt protocol, on a free port, Whisper with
``--model``), then opens ``--streams`` WebSocket sessions that each send ``--seconds`` of real
English recordings (testdata, with short pauses between them) at real-time pace, PCM int16
in 64 ms chunks like the seed's pyaudio client (or ``--format webm``: Opus in webm, like
MediaRecorder). Streams start staggered over the first second.

Per stream it measures: partials received while audio flowed, the gaps between them (partial
cadence), when the first one came, the latency from ``stop`` (sent right after the last chunk)
to ``final``, and the final's WER. For the server it reads the event-loop lag histogram and
the inference histograms from ``/metrics`` (deltas over the run) and its CPU time from /proc.

    .venv/bin/python bench/streaming_latency.py --streams 4 --seconds 20 --model tiny.en
    .venv/bin/python bench/streaming_latency.py --streams 16 --seconds 12 --model tiny.en \
        --out bench/results/streaming_latency.md

``--workers`` sets ``[executor] workers`` (default: one per stream, at least 2, so that every
session's decode can join a batch); ``--whisper k=v,...`` adds ``[engines.whisper]`` settings.
``--out`` appends a markdown section (with the load average: the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from asrhub.audio import decode_file
from asrhub.loopmon import LoopLagMonitor
from asrhub.testing import free_port, manifest, testdata_dir, wer


def _load_helpers():
    """The streaming STT tests' helpers: PCM chunks like pyaudio's, Opus in live webm like
    MediaRecorder's (one implementation for the tests and this bench)."""
    path = Path(__file__).resolve().parent.parent / "tests" / "plugins" / "streaming_stt" / "stt_helpers.py"
    spec = importlib.util.spec_from_file_location("stt_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load_helpers()

# English recordings with human references (NOTES.tsv).
CLIPS = [
    "en/pocketsphinx_librivox_ss01_0870.wav",
    "en/speechbrain_example1.wav",
    "en/pocketsphinx_librivox_ss01_0880.wav",
    "en/speechbrain_spk1_snt1.wav",
    "en/pocketsphinx_librivox_ss01_0890.wav",
    "en/speechbrain_spk2_snt1.wav",
    "en/pocketsphinx_librivox_ss01_0930.wav",
    "en/speechbrain_spk1_snt3.wav",
]
RATE = 16000
LEAD = 0.3  # silence before the first word of a stream
CHUNK = 1024  # samples, like the seed's pyaudio examples


@dataclass
class StreamResult:
    index: int
    audio_s: float
    reference: str
    partial_times: list[float] = field(default_factory=list)  # seconds since the stream began
    first_partial_s: float | None = None
    stop_to_final_s: float | None = None
    final: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.partial_times, self.partial_times[1:], strict=False)]


def build_audio(seconds: float, offset: int, tail: float) -> tuple[np.ndarray, str]:
    """About ``seconds`` of recordings (0.6 s pauses), starting at clip ``offset``, ending
    ``tail`` seconds after the last word."""
    rows = manifest()
    pieces, words, total, i = [np.zeros(int(LEAD * RATE), np.float32)], [], LEAD, offset
    while total < seconds:
        name = CLIPS[i % len(CLIPS)]
        audio = decode_file(testdata_dir() / name)
        pieces += [audio, np.zeros(int(0.6 * RATE), np.float32)]
        words.append(rows[name]["transcript"])
        total += len(audio) / RATE + 0.6
        i += 1
    pieces[-1] = np.zeros(int(tail * RATE), np.float32)
    return np.concatenate(pieces), " ".join(words)


async def run_stream(url: str, index: int, audio: np.ndarray, reference: str, fmt: str,
                     delay: float) -> StreamResult:
    await asyncio.sleep(delay)
    result = StreamResult(index, len(audio) / RATE, reference)
    chunks = helpers.container_chunks(audio, "webm") if fmt == "webm" else helpers.pcm_chunks(audio, CHUNK)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.receive_json()  # connected
        await ws.send_str('{"command": "start"}')
        await ws.receive_json()  # session_started
        began = time.monotonic()
        stopped: list[float] = []
        done = asyncio.get_running_loop().create_future()

        async def receive() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                now = time.monotonic()
                if data["type"] == "partial" and not stopped:
                    result.partial_times.append(now - began)
                elif data["type"] == "final":
                    result.final = data["text"]
                    result.stop_to_final_s = now - stopped[0] if stopped else None
                elif data["type"] == "error":
                    result.errors.append(data.get("code", "?"))
                elif data["type"] == "session_ended":
                    done.set_result(None)
                    return

        receiver = asyncio.create_task(receive())
        for t, chunk in chunks:
            wait = began + t - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await ws.send_bytes(chunk)
        stopped.append(time.monotonic())
        await ws.send_str('{"command": "stop"}')
        await asyncio.wait_for(done, 120)
        receiver.cancel()
    if result.partial_times:
        result.first_partial_s = result.partial_times[0] - LEAD
    return result


# ---------------------------------------------------------------------- server


def start_server(model: str, port: int, workdir: Path, workers: int = 2,
                 whisper: str = "") -> subprocess.Popen:
    config = workdir / "asrhub.toml"
    protocols = "\n".join(f"[protocols.{name}]\nenabled = false\n" for name in
                          ("ptt", "vad_stream", "file_transcription", "session_broadcast"))
    config.write_text(f"""
[server]
host = "127.0.0.1"
state_dir = "{workdir / 'state'}"
log_level = "warning"
log_format = "json"
preload = true

[executor]
workers = {workers}

[engines.whisper]
model = "{model}"
language = "en"
{whisper}

[protocols.streaming_stt]
port = {port}

{protocols}
""")
    exe = Path(sys.executable).with_name("asrhub")
    cmd = [str(exe), "serve", "--config", str(config)] if exe.exists() else \
        [sys.executable, "-m", "asrhub.cli", "serve", "--config", str(config)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"))


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"asrhub exited with {proc.returncode} (see its log)")
            try:
                async with http.get(base + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("asrhub did not become ready")


async def scrape(base: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _labels(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    return name, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def histogram(before: dict[str, float], after: dict[str, float], metric: str,
              **labels: str) -> tuple[float, float, list[tuple[float, float]]]:
    """(count, sum, [(upper bound, cumulative count)]) of a histogram over the run."""
    count = total = 0.0
    buckets: dict[float, float] = {}
    for key, value in after.items():
        name, found = _labels(key)
        le = found.pop("le", None)
        if not name.startswith(metric) or found != labels:
            continue
        change = value - before.get(key, 0.0)
        if name == f"{metric}_bucket" and le is not None:
            buckets[float(le)] = change
        elif name == f"{metric}_count":
            count = change
        elif name == f"{metric}_sum":
            total = change
    return count, total, sorted(buckets.items())


def quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return bound
    return float("inf")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- main


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4, help="concurrent sessions (default 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session (default 20)")
    parser.add_argument("--model", default="tiny.en", help="[engines.whisper] model (default tiny.en)")
    parser.add_argument("--format", choices=["pcm", "webm"], default="pcm", help="what clients send")
    parser.add_argument("--workers", type=int, default=0,
                        help="[executor] workers (default: one per stream, at least 2)")
    parser.add_argument("--whisper", default="",
                        help="extra [engines.whisper] settings as TOML lines joined by ',', "
                             "e.g. 'max_batch = 1,adaptive_window = false'")
    parser.add_argument("--out", default="", help="append a markdown section to this file")
    parser.add_argument("--tail", type=float, default=0.0,
                        help="silence between the last word and stop (default 0: stop right at the "
                             "end of speech, the hardest case for stop→final)")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="asrhub-bench-") as tmp:
        workdir = Path(tmp)
        workers = args.workers or max(2, args.streams)
        proc = start_server(args.model, port, workdir, workers,
                            "\n".join(line.strip() for line in args.whisper.split(",")))
        try:
            started = time.monotonic()
            await wait_ready(base, proc)
            print(f"asrhub ready in {time.monotonic() - started:.1f} s (model {args.model}, port {port})")
            audios = [build_audio(args.seconds, i * 3, args.tail) for i in range(args.streams)]
            before, cpu_before = await scrape(base), cpu_seconds(proc.pid)
            client_lag = LoopLagMonitor()
            client_lag.start()
            wall = time.monotonic()
            results = await asyncio.gather(*(
                run_stream(base + "/", i, audio, ref, args.format, delay=i / max(1, args.streams))
                for i, (audio, ref) in enumerate(audios)))
            wall = time.monotonic() - wall
            await client_lag.stop()
            after, cpu_after = await scrape(base), cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"\n{args.streams} stream(s) x {args.seconds:.0f} s of speech, {args.format}, real time, "
          f"stop {args.tail:.1f} s after the last word, model {args.model}, {os.cpu_count()} CPU(s)\n")
    header = (f"{'stream':>6} {'audio s':>8} {'partials':>8} {'first':>7} {'gap p50':>8} "
              f"{'gap max':>8} {'stop→final':>10} {'WER':>6} errors")
    print(header)
    print("-" * len(header))
    print("(first: first partial, seconds after the first word was sent; gap: between partials)")
    for r in results:
        gaps = r.gaps
        print(f"{r.index:>6} {r.audio_s:>8.1f} {len(r.partial_times):>8} {fmt(r.first_partial_s, 's'):>7} "
              f"{fmt(statistics.median(gaps) if gaps else None, 's'):>8} {fmt(max(gaps) if gaps else None, 's'):>8} "
              f"{fmt(r.stop_to_final_s, 's', 3):>10} {wer(r.reference, r.final):>6.3f} {','.join(r.errors) or '-'}")
    latencies = [r.stop_to_final_s for r in results if r.stop_to_final_s is not None]
    all_gaps = [g for r in results for g in r.gaps]
    print("-" * len(header))
    summary: list[str] = []
    if latencies:
        p95 = float(np.percentile(latencies, 95))
        summary.append(f"stop→final: p50 {statistics.median(latencies):.3f} s, p95 {p95:.3f} s, "
                       f"max {max(latencies):.3f} s ({len(latencies)} sessions)")
    words = [len(r.reference.split()) for r in results]
    overall = sum(wer(r.reference, r.final) * n for r, n in zip(results, words, strict=True))
    summary.append(f"WER over all sessions: {overall / max(1, sum(words)):.3f}")
    for line in summary:
        print(line)
    if all_gaps:
        gaps_sorted = sorted(all_gaps)
        print(f"partial cadence (gap between partials): p50 {statistics.median(all_gaps):.2f} s, "
              f"p90 {gaps_sorted[int(0.9 * (len(gaps_sorted) - 1))]:.2f} s, max {max(all_gaps):.2f} s "
              "(gaps include the pauses between recordings)")
    count, total, buckets = histogram(before, after, "asrhub_event_loop_lag_seconds")
    if count:
        summary.append(
            f"server event-loop lag ({int(count)} samples every 50 ms): mean {1000 * total / count:.1f} ms, "
            f"p50 <= {1000 * quantile(buckets, count, 0.5):.0f} ms, p99 <= {1000 * quantile(buckets, count, 0.99):.0f} ms, "
            f"max <= {1000 * quantile(buckets, count, 1.0):.0f} ms")
        print(summary[-1])
    count, total, buckets = histogram(before, after, "asrhub_inference_seconds", engine="whisper")
    if count:
        print(f"inference calls (whisper): {int(count)}, mean {1000 * total / count:.0f} ms, "
              f"p95 <= {1000 * quantile(buckets, count, 0.95):.0f} ms")
    count, total, buckets = histogram(before, after, "asrhub_inference_wait_seconds", priority="live")
    if count:
        print(f"executor queue wait (live): mean {1000 * total / count:.0f} ms, "
              f"p95 <= {1000 * quantile(buckets, count, 0.95):.0f} ms")
    audio_total = sum(r.audio_s for r in results)
    summary.append(f"server CPU: {cpu_after - cpu_before:.1f} s for {audio_total:.0f} s of audio "
                   f"(RTF {(cpu_after - cpu_before) / audio_total:.3f} CPU-s per audio-s); "
                   f"run took {wall:.1f} s")
    print(summary[-1])
    if args.out:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        with open(args.out, "a") as fh:
            fh.write(f"\n### {args.streams} × {args.model}, {args.format}, stop {args.tail:.1f} s after "
                     f"the last word, executor workers {workers}"
                     f"{', ' + args.whisper if args.whisper else ''}\n\n"
                     f"`.venv/bin/python {' '.join(sys.argv)}` — "
                     f"{time.strftime('%Y-%m-%d %H:%M')}, load average after {load} "
                     f"(2 cores shared with other jobs: latencies are noisy)\n\n"
                     + "".join(f"- {line}\n" for line in summary))
    print(f"bench client loop lag: {client_lag.summary_ms()}")
    return 0 if all(not r.errors and r.final for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
