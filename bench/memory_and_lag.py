#!/usr/bin/env python3
"""Memory of all protocols together vs one protocol, and event-loop lag while they work.

Starts ``asrhub serve`` twice on free ports: once with only the PTT protocol, once with all
five. Each run pushes a real recording through every enabled protocol with a minimal client
(one concurrent session per protocol), then reads the server's RSS (VmRSS, VmHWM from /proc)
and the event-loop lag histogram from ``/metrics``. Models are shared, so the target is
all ≈ one (the extra cost is the speaker model and per-protocol state, not model copies).

    .venv/bin/python bench/memory_and_lag.py --model tiny.en
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import numpy as np

# Run as a script, bench/ is sys.path[0] and bench/wyoming.py would shadow the wyoming package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from asrhub.audio import decode_file, float_to_pcm16  # noqa: E402
from asrhub.testing import free_port, testdata_dir  # noqa: E402

CLIP = "en/pocketsphinx_librivox_ss01_0870.wav"
PROTOCOLS = ["ptt", "streaming_stt", "vad_stream", "file_transcription", "session_broadcast",
             "openai_api", "funasr_runtime", "wyoming"]


def proc_memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def lag_buckets(metrics: str) -> list[tuple[float, float]]:
    return [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r'asrhub_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', metrics)]


def lag_quantile(before: str, after: str, q: float) -> float:
    """Upper bound of the bucket holding quantile q of the loop lag sampled between two
    /metrics reads (start-up, when engines load, is left out: it is not serving load)."""
    start = dict(lag_buckets(before))
    buckets = [(bound, count - start.get(bound, 0.0)) for bound, count in lag_buckets(after)]
    if not buckets:
        return float("nan")
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


async def ptt(port: int, pcm: np.ndarray) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/ws/asr") as ws:
        await ws.receive_json()
        await ws.send_json({"type": "control", "command": "start"})
        for i in range(0, len(pcm), 1600):
            data = base64.b64encode(float_to_pcm16(pcm[i:i + 1600])).decode()
            await ws.send_json({"type": "audio", "data": data})
            await asyncio.sleep(0.1)
        await ws.send_json({"type": "control", "command": "stop"})
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("type") == "result" and data.get("mode") == "final":
                return data["text"]
    return ""


async def streaming(port: int, pcm: np.ndarray) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        await ws.receive_json()
        await ws.send_json({"command": "start"})
        for i in range(0, len(pcm), 1600):
            await ws.send_bytes(float_to_pcm16(pcm[i:i + 1600]))
            await asyncio.sleep(0.1)
        await ws.send_json({"command": "stop"})
        final = ""
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("type") == "final":
                final = data["text"]
            if data.get("type") == "session_ended":
                break
        return final


async def vad_stream(port: int, pcm: np.ndarray) -> str:
    padded = np.concatenate([pcm, np.zeros(16000, np.float32)])
    texts = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        async def reader():
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("type") == "result":
                    texts.append(data["text"])
        task = asyncio.create_task(reader())
        for i in range(0, len(padded), 320):
            await ws.send_bytes(float_to_pcm16(padded[i:i + 320]))
            await asyncio.sleep(0.02)
        await asyncio.sleep(2.0)
        task.cancel()
    return " ".join(texts)


async def file_upload(port: int, path: Path) -> str:
    data = path.read_bytes()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/",
                                                                max_msg_size=0) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "upload_request", "data": {
            "file_name": path.name, "file_size": len(data), "file_hash": hashlib.md5(data).hexdigest(),
            "output_format": "json", "force_refresh": True}})
        async for msg in ws:
            body = json.loads(msg.data)
            if body["type"] == "upload_ready":
                await ws.send_json({"type": "upload_data", "data": {
                    "task_id": body["data"]["task_id"], "file_data": base64.b64encode(data).decode()}})
            elif body["type"] == "task_complete":
                return body["data"]["result"]["text"]
            elif body["type"] == "error":
                return f"error: {body['data']}"
    return ""


async def broadcast(port: int, pcm: np.ndarray, session: str | None = None) -> str:
    session = session or uuid.uuid4().hex
    padded = np.concatenate([pcm, np.zeros(16000, np.float32) + 1e-4]).astype("<f4")
    texts = []
    async with aiohttp.ClientSession() as http:
        receiver = await http.ws_connect(f"http://127.0.0.1:{port}/ws/asr/{session}?mode=receiver")
        sender = await http.ws_connect(f"http://127.0.0.1:{port}/ws/asr/{session}?mode=sender")

        async def read():
            async for msg in receiver:
                data = json.loads(msg.data)
                if "asr" in data:
                    texts.append(data["asr"])
                if data.get("type") == "closed":
                    return
        task = asyncio.create_task(read())
        for i in range(0, len(padded), 1600):
            await sender.send_bytes(padded[i:i + 1600].tobytes())
            await asyncio.sleep(0.1)
        await sender.send_str("close")
        try:
            await asyncio.wait_for(task, 30)
        except TimeoutError:
            task.cancel()
        await sender.close()
        await receiver.close()
    return " ".join(texts)


async def openai_upload(port: int, path: Path) -> str:
    form = aiohttp.FormData()
    form.add_field("file", path.read_bytes(), filename=path.name, content_type="audio/wav")
    form.add_field("model", "whisper-1")
    async with aiohttp.ClientSession() as http, \
            http.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", data=form) as resp:
        return (await resp.json()).get("text", "")


async def funasr_offline(port: int, pcm: np.ndarray) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        await ws.send_json({"mode": "offline", "wav_name": "bench", "wav_format": "pcm",
                            "audio_fs": 16000, "is_speaking": True})
        data = float_to_pcm16(pcm)
        for i in range(0, len(data), 19200):
            await ws.send_bytes(data[i:i + 19200])
        await ws.send_json({"is_speaking": False})
        async for msg in ws:
            body = json.loads(msg.data)
            if body.get("mode") == "offline":
                return body.get("text", "")
    return ""


async def wyoming(port: int, pcm: np.ndarray) -> str:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    data = float_to_pcm16(pcm)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(data), 3200):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                                audio=data[i:i + 3200]).event())
            await asyncio.sleep(0.1)
        await client.write_event(AudioStop().event())
        while (event := await client.read_event()) is not None:
            if Transcript.is_type(event.type):
                return Transcript.from_event(event).text
    return ""


async def exercise(ports: dict[str, int], pcm: np.ndarray, wav: Path) -> dict[str, str]:
    jobs = {"ptt": lambda: ptt(ports["ptt"], pcm),
            "streaming_stt": lambda: streaming(ports["streaming_stt"], pcm),
            "vad_stream": lambda: vad_stream(ports["vad_stream"], pcm),
            "file_transcription": lambda: file_upload(ports["file_transcription"], wav),
            "session_broadcast": lambda: broadcast(ports["session_broadcast"], pcm),
            "openai_api": lambda: openai_upload(ports["openai_api"], wav),
            "funasr_runtime": lambda: funasr_offline(ports["funasr_runtime"], pcm),
            "wyoming": lambda: wyoming(ports["wyoming"], pcm)}
    names = [n for n in jobs if n in ports]
    results = await asyncio.gather(*(jobs[n]() for n in names))
    return dict(zip(names, results, strict=True))


def scrape(port: int | None) -> str:
    if port is None:  # a TCP-only server has no /metrics
        return ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def run(enabled: list[str], model: str, pcm: np.ndarray, wav: Path) -> dict:
    state = Path(tempfile.mkdtemp(prefix="asrhub-bench-"))
    ports = {name: free_port() for name in PROTOCOLS}
    lines = ['[server]', 'host = "127.0.0.1"', f'state_dir = "{state}"', 'log_format = "json"', '',
             '[engines.whisper]', f'model = "{model}"', '']
    for name in PROTOCOLS:
        lines += [f"[protocols.{name}]", f"enabled = {'true' if name in enabled else 'false'}",
                  f"port = {ports[name]}"]
        if name == "vad_stream":
            lines += ["[protocols.vad_stream.static]", f"port = {free_port()}"]
        lines.append("")
    config = state / "asrhub.toml"
    config.write_text("\n".join(lines))
    log_path = state / "server.log"
    asrhub = str(Path(sys.executable).parent / "asrhub")
    with log_path.open("w") as log:
        server = subprocess.Popen([asrhub, "serve", "--config", str(config)], stdout=log, stderr=log)
    try:
        first = ports[next(n for n in enabled if n != "wyoming")] if enabled != ["wyoming"] else None
        deadline = time.monotonic() + 300
        while True:
            try:
                if first is None:  # a TCP-only server: ready once its engines are loaded
                    if '"event": "ready"' in log_path.read_text():
                        break
                else:
                    with urllib.request.urlopen(f"http://127.0.0.1:{first}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        ready_mem = proc_memory(server.pid)
        metrics_before = scrape(first)
        texts = asyncio.run(exercise({n: ports[n] for n in enabled}, pcm, wav))
        mem = proc_memory(server.pid)
        metrics = scrape(first)
        loads = [json.loads(line) for line in log_path.read_text().splitlines()
                 if '"engine_loaded"' in line]
        return {"enabled": enabled, "ready_rss_mb": ready_mem["VmRSS"], "rss_mb": mem["VmRSS"],
                "peak_mb": mem["VmHWM"],
                "lag_p50_ms": lag_quantile(metrics_before, metrics, 0.5) * 1000,
                "lag_p99_ms": lag_quantile(metrics_before, metrics, 0.99) * 1000,
                "engine_loads": sorted(f"{e['kind']}:{e['engine']}" for e in loads), "texts": texts}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_and_lag.md"))
    args = parser.parse_args()
    wav = testdata_dir() / CLIP
    pcm = decode_file(wav)
    singles = {name: run([name], args.model, pcm, wav) for name in PROTOCOLS}
    every = run(PROTOCOLS, args.model, pcm, wav)
    biggest = max(singles.values(), key=lambda r: r["rss_mb"])
    total = sum(r["rss_mb"] for r in singles.values())
    rows = ["| server | RSS ready (MB) | RSS after a session (MB) | peak (MB) | loop lag p50 / p99 (ms) | engines loaded |",
            "|---|---|---|---|---|---|"]
    for name, r in [*singles.items(), (f"all {len(PROTOCOLS)} together", every)]:
        rows.append(f"| {name} | {r['ready_rss_mb']:.0f} | {r['rss_mb']:.0f} | {r['peak_mb']:.0f} | "
                    f"{r['lag_p50_ms']:g} / {r['lag_p99_ms']:g} | {', '.join(r['engine_loads'])} |")
    rows += ["", f"all together / largest single protocol ({', '.join(biggest['enabled'])}): "
             f"**{every['rss_mb'] / biggest['rss_mb']:.2f}x**; all together / sum of {len(PROTOCOLS)} separate "
             f"servers: **{every['rss_mb'] / total:.2f}x** ({every['rss_mb']:.0f} MB vs {total:.0f} MB)."]
    report = [f"# Memory and event-loop lag (`bench/memory_and_lag.py --model {args.model}`)", "",
              f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores); "
              f"one concurrent session per enabled protocol, clip `{CLIP}`. Lag is the upper bound "
              "of the /metrics histogram bucket holding that quantile, "
              "over the sessions only (start-up, when models load, is left out).", "", *rows, "",
              f"Texts (all {len(PROTOCOLS)} protocols at once):", ""]
    report += [f"- {name}: {text}" for name, text in every["texts"].items()]
    text = "\n".join(report) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
