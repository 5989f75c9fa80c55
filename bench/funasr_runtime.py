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

    .venv/bin/python bench/funasr_runtime.py --clients 4 --seconds 40 --rounds 2 --model tiny.en
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0, help="audio per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()

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
    recordings, ends = [], {}
    for i in range(args.clients):
        path = tmp / f"rec{i}.wav"
        ends[f"rec{i}"] = build_recording(i, args.seconds, path)
        recordings.append(f"rec{i} {path}")
    (tmp / "wav.scp").write_text("\n".join(recordings) + "\n")
    (tmp / "wrapper.py").write_text(WRAPPER)

    load_before = uptime()
    exe = Path(sys.executable).parent / "asrhub"
    log = (tmp / "serve.log").open("wb")
    server = subprocess.Popen([str(exe), "serve", "--config", str(config)], stdout=log,
                              stderr=subprocess.STDOUT)
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        started = time.time()
        rss.append((0.0, rss_mb(server.pid)))

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append((time.time() - started, rss_mb(server.pid)))

        threading.Thread(target=sample, daemon=True).start()
        latencies: list[float] = []
        missed = sentences = 0
        round_rss = []
        for round_no in range(args.rounds):
            sends = tmp / f"sends{round_no}"
            sends.mkdir()
            out, logs = tmp / f"out{round_no}", tmp / f"logs{round_no}"
            proc = subprocess.run(
                [sys.executable, str(tmp / "wrapper.py"), str(client), "--host", "127.0.0.1",
                 "--port", str(port), "--ssl", "0", "--mode", "2pass", "--audio_in",
                 str(tmp / "wav.scp"), "--thread_num", str(args.clients), "--output_dir",
                 str(out), "--log_dir", str(logs)],
                cwd=tmp, capture_output=True, text=True,
                env={**os.environ, "SEND_LOG_DIR": str(sends)})
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                raise SystemExit("FunASR's client failed")
            round_rss.append(rss_mb(server.pid))
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
                sent_at[name] = [next(t for pos, t in stamps if pos >= end - 1e-6)
                                 for end in ends[name]]
            events = []
            for path in logs.glob("meeting_*/events.jsonl"):
                events += [json.loads(line) for line in path.read_text().splitlines()]
            for name, times in sent_at.items():
                results = sorted(e["recv_ts"] for e in events
                                 if e["wav_name"] == name and e["mode"] == "2pass-offline")
                for k, end_sent in enumerate(times):
                    sentences += 1
                    limit = times[k + 1] if k + 1 < len(times) else float("inf")
                    got = [r for r in results if end_sent < r <= limit]
                    if got:
                        latencies.append(got[-1] - end_sent)
                    else:
                        missed += 1
        stop.set()
    finally:
        stop.set()
        server.terminate()
        server.wait(60)
    load_after = uptime()
    latencies.sort()
    p = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies \
        else (lambda q: float("nan"))
    print(f"\n{args.clients} FunASR client(s) (--mode 2pass --thread_num {args.clients}), "
          f"{args.seconds:.0f} s of speech each per round, {args.rounds} round(s), real-time "
          f"pace, model {args.model}, {os.cpu_count()} CPU(s)")
    print(f"load before: {load_before}")
    print(f"load after:  {load_after}")
    print(f"sentences: {sentences}, with a 2pass-offline result: {len(latencies)}, "
          f"missed: {missed}")
    if latencies:
        print(f"sentence end → 2pass-offline: p50 {p(0.5):.2f} s, p95 {p(0.95):.2f} s, "
              f"max {latencies[-1]:.2f} s, mean {statistics.mean(latencies):.2f} s")
    print("server RSS (MB): ready {:.0f}, after each round {}, max {:.0f}".format(
        rss[0][1], ", ".join(f"{r:.0f}" for r in round_rss), max(r for _, r in rss)))


if __name__ == "__main__":
    main()
