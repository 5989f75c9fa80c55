#!/usr/bin/env python3
"""FunASR runtime protocol under concurrent 2pass load: sentence end → ``2pass-offline`` latency
and the server's memory over repeated rounds.

Starts ``asrhub serve`` (only the funasr_runtime protocol) and runs FunASR's own client
(``shared/peers/funasr-runtime/funasr_wss_client.py``, unchanged) with ``--mode 2pass
--thread_num N`` on N long recordings built from the test clips (sentences with pauses),
paced in real time, ``--rounds`` times in a row. Per sentence: the time from when the client
sent the sentence's last audio to when its ``2pass-offline`` result arrived (that includes the
VAD's wait for the pause that ends the sentence). The client itself is not modified: the
bench runs it under a wrapper that only records when each WebSocket message was sent
(a patched ``send`` in the client's process). The server's RSS is sampled every second.

    .venv/bin/python bench/funasr_runtime.py --clients 1,4 --seconds 30 --rounds 3 --model tiny.en
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

from asrhub.testing import free_port, testdata_dir

CLIPS = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
         "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
         "en/pocketsphinx_librivox_ss01_0930.wav", "en/speechbrain_example1.wav"]
GAP_S = 1.5
SR = 16000

# Runs FunASR's client unchanged, recording the time and size of every message it sends.
WRAPPER = r"""
import json, os, runpy, sys, time
import websockets.legacy.protocol as protocol
log_dir = os.environ["SEND_LOG_DIR"]
original = protocol.WebSocketCommonProtocol.send
async def send(self, message):
    with open(os.path.join(log_dir, f"{os.getpid()}.jsonl"), "a") as fh:
        entry = {"t": time.time()}
        entry.update({"bytes": len(message)} if isinstance(message, bytes) else {"text": message})
        fh.write(json.dumps(entry) + "\n")
    return await original(self, message)
protocol.WebSocketCommonProtocol.send = send
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def build_recording(index: int, seconds: float, path: Path) -> list[float]:
    """Clips with pauses until ``seconds``; returns where each sentence ends (s)."""
    parts, ends, position = [], [], 0.0
    gap = np.zeros(int(GAP_S * SR), np.float32)
    k = index
    while position < seconds:
        audio, rate = sf.read(testdata_dir() / CLIPS[k % len(CLIPS)], dtype="float32")
        assert rate == SR
        parts += [audio, gap]
        position += len(audio) / SR
        ends.append(position)
        position += GAP_S
        k += 1
    sf.write(path, np.concatenate(parts), SR, subtype="PCM_16")
    return ends


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_round(tmp: Path, client: Path, port: int, clients: int, seconds: float,
              tag: str) -> tuple[list[float], int, int]:
    """One run of FunASR's client with ``clients`` processes; per-sentence latencies."""
    work = tmp / tag
    work.mkdir()
    recordings, ends = [], {}
    for i in range(clients):
        path = work / f"rec{i}.wav"
        ends[f"rec{i}"] = build_recording(i, seconds, path)
        recordings.append(f"rec{i} {path}")
    (work / "wav.scp").write_text("\n".join(recordings) + "\n")
    sends, out, logs = work / "sends", work / "out", work / "logs"
    sends.mkdir()
    proc = subprocess.run(
        [sys.executable, str(tmp / "wrapper.py"), str(client), "--host", "127.0.0.1",
         "--port", str(port), "--ssl", "0", "--mode", "2pass", "--audio_in",
         str(work / "wav.scp"), "--thread_num", str(clients), "--output_dir", str(out),
         "--log_dir", str(logs)],
        cwd=work, capture_output=True, text=True, env={**os.environ, "SEND_LOG_DIR": str(sends)})
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        raise SystemExit("FunASR's client failed")
    # When each client sent the end of each sentence.
    sent_at: dict[str, list[float]] = {}
    for path in sends.glob("*.jsonl"):
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        first = next(e for e in entries if "text" in e)
        name = json.loads(first["text"])["wav_name"]
        stamps, total = [], 0
        for entry in entries:
            if "bytes" in entry:
                total += entry["bytes"]
                stamps.append((total / (2 * SR), entry["t"]))
        sent_at[name] = [next(t for pos, t in stamps if pos >= end - 1e-6) for end in ends[name]]
    events = []
    for path in logs.glob("meeting_*/events.jsonl"):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    latencies: list[float] = []
    sentences = missed = 0
    for name, times in sent_at.items():
        results = sorted(e["recv_ts"] for e in events
                         if e["wav_name"] == name and e["mode"] == "2pass-offline")
        sentences += len(times)
        if len(results) == len(times):  # one result per sentence: pair them in order
            latencies += [r - t for r, t in zip(results, times, strict=True)]
            continue
        # The VAD split or joined sentences: the last result before the next sentence's end.
        for k, end_sent in enumerate(times):
            limit = times[k + 1] if k + 1 < len(times) else float("inf")
            got = [r for r in results if end_sent < r <= limit]
            if got:
                latencies.append(got[-1] - end_sent)
            else:
                missed += 1
    return latencies, sentences, missed


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4",
                        help="concurrent clients per run, comma-separated (each run in turn)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per client per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the largest client count")
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    client = testdata_dir().parent / "peers" / "funasr-runtime" / "funasr_wss_client.py"
    tmp = Path(tempfile.mkdtemp(prefix="bench-funasr-runtime-"))
    port = free_port()
    config = tmp / "asrhub.toml"
    from asrhub.config import parse_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager

    others = [n for n in Hub(parse_config({}), make_plugin_manager()).protocols
              if n != "funasr_runtime"]
    config.write_text("\n".join([
        "[server]", 'host = "127.0.0.1"', f'state_dir = "{tmp / "state"}"', 'log_format = "json"',
        "[engines]", 'asr = "whisper"', 'vad = "silero"',
        "[engines.whisper]", f'model = "{args.model}"', 'language = "en"',
        "[protocols.funasr_runtime]", f"port = {port}",
        *[f"[protocols.{n}]\nenabled = false" for n in others]]) + "\n")
    (tmp / "wrapper.py").write_text(WRAPPER)

    load_before = uptime()
    exe = Path(sys.executable).parent / "asrhub"
    log = (tmp / "serve.log").open("wb")
    server = subprocess.Popen([str(exe), "serve", "--config", str(config)], stdout=log,
                              stderr=subprocess.STDOUT)
    rss: list[float] = []
    stop = threading.Event()
    rows = []
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        ready_rss = rss_mb(server.pid)

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append(rss_mb(server.pid))

        threading.Thread(target=sample, daemon=True).start()
        for count in counts:
            rounds = args.rounds if count == max(counts) else 1
            for round_no in range(rounds):
                started = time.time()
                latencies, sentences, missed = run_round(tmp, client, port, count, args.seconds,
                                                         f"c{count}r{round_no}")
                rows.append((count, round_no + 1, sentences, len(latencies), missed,
                             quantile(latencies, 0.5), quantile(latencies, 0.95),
                             max(latencies, default=float("nan")), rss_mb(server.pid),
                             time.time() - started))
    finally:
        stop.set()
        server.terminate()
        server.wait(60)
    load_after = uptime()
    print(f"\nFunASR's client, --mode 2pass --thread_num N, {args.seconds:.0f} s of speech per "
          f"client per round (sentences with {GAP_S} s pauses), real-time pace, model "
          f"{args.model}, Silero VAD, {os.cpu_count()} CPU(s)")
    print(f"load before: {load_before}")
    print(f"load after:  {load_after}")
    print(f"server RSS when ready: {ready_rss:.0f} MB, max over the run: {max(rss, default=0):.0f} MB")
    print()
    print("  N round sentences results missed  p50 s  p95 s  max s  RSS after MB  wall s")
    for row in rows:
        print("{:3d} {:5d} {:9d} {:7d} {:6d} {:6.2f} {:6.2f} {:6.2f} {:13.0f} {:7.1f}".format(*row))
    print("(latency: the client sent a sentence's last audio → its 2pass-offline arrived; it "
          "includes the VAD's 0.5 s wait for the pause that ends the sentence)")


if __name__ == "__main__":
    main()
