#!/usr/bin/env python3
"""File-task throughput of a cluster: 1, 2, then 3 ``asrhub serve`` instances behind HAProxy,
sharing tasks through Redis (Streams queue, Redis task store, a common spool directory).

One redis-server and one HAProxy (leastconn over three backends; an instance not started yet
fails its health check and gets nothing). Instance A starts, ``--tasks`` files are submitted at
once through HAProxy (each a different file: two reader clips with their own faint noise, so no
cache hit), and the wall time from the first upload to the last ``task_complete`` gives tasks
per minute; then B starts and a new batch runs, then C. Every instance: Whisper tiny.en,
``concurrency = 1``, no diarization. Ratios to one instance are printed side by side.

    .venv/bin/python bench/cluster_files.py --tasks 6
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asrhub.testing import make_hub, manifest, testdata_dir, wer  # noqa: E402
from tests.cluster_harness import HAProxy, Instance, Redis, wait_until  # noqa: E402

RATE = 16000
READER = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
          "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
          "en/pocketsphinx_librivox_ss01_0930.wav"]
RESULTS = ROOT / "bench" / "results" / "cluster_files.md"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def clip(name: str) -> np.ndarray:
    audio, rate = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    assert rate == RATE
    return audio.mean(axis=1)


def make_file(index: int, seed: int) -> tuple[bytes, str]:
    """Two reader clips with a pause and faint noise of their own (a distinct file)."""
    names = [READER[index % len(READER)], READER[(index + 2) % len(READER)]]
    rng = np.random.default_rng(seed)
    pause = (rng.standard_normal(RATE // 2) * 1e-4).astype(np.float32)
    audio = np.concatenate([clip(names[0]), pause, clip(names[1]), pause])
    audio = audio + (rng.standard_normal(len(audio)) * 1e-4).astype(np.float32)
    path = Path(tempfile.mkstemp(suffix=".wav")[1])
    sf.write(str(path), audio, RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.unlink()
    rows = manifest()
    return data, " ".join(rows[n]["transcript"] for n in names)


async def one_task(url: str, data: bytes) -> dict[str, Any]:
    import websockets

    async with websockets.connect(url, max_size=16 * 1024 * 1024) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "upload_request", "data": {
            "file_name": "bench.wav", "file_size": len(data), "file_hash": hashlib.md5(data).hexdigest()}}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "upload_ready", ready
        await ws.send(json.dumps({"type": "upload_data", "data": {
            "task_id": ready["data"]["task_id"], "file_data": base64.b64encode(data).decode()}}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 600))
            if message["type"] == "task_complete":
                return message["data"]["result"]
            if message["type"] == "error":
                raise RuntimeError(message)


async def batch(url: str, files: list[tuple[bytes, str]]) -> tuple[float, float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_task(url, data) for data, _ in files))
    wall = time.perf_counter() - started
    errors = [wer(ref, result["text"]) for (_, ref), result in zip(files, results, strict=True)]
    return wall, float(np.mean(errors))


def instance(tmp: Path, name: str, redis_url: str, spool: Path) -> Instance:
    disabled = [n for n in make_hub({}).protocols if n != "file_transcription"]
    return Instance(tmp, name, redis_url, disabled, protocol="file_transcription",
                    settings=[f'shared_spool_dir = "{spool}"', "diarization = false", "concurrency = 1"],
                    sections=["[engines]", 'asr = "whisper"', 'vad = "silero"',
                              "[engines.whisper]", 'model = "tiny.en"', 'language = "en"'])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=6, help="files per batch")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = uptime()
    rows: list[tuple[int, float, float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="asrhub-bench-cluster-") as folder:
        tmp = Path(folder)
        spool = tmp / "spool"
        redis = Redis(tmp)
        redis.start()
        nodes = [instance(tmp, f"n{i}", redis.url, spool) for i in range(1, args.instances + 1)]
        proxy = HAProxy(tmp, [n.port for n in nodes], name="file_transcription")
        try:
            proxy.start()
            for count, node in enumerate(nodes, start=1):
                node.start()
                wait_until(node.ready, 300, f"instance {node.name}: {node.log()}")
                time.sleep(1.5)  # HAProxy's checks (rise 2 x 300 ms) put it in
                files = [make_file(i, seed=1000 * count + i) for i in range(args.tasks)]
                before = [len(n.events("file_task_completed")) for n in nodes[:count]]
                wall, mean_wer = asyncio.run(batch(f"ws://127.0.0.1:{proxy.port}", files))
                per_minute = args.tasks / wall * 60
                ran = [len(n.events("file_task_completed")) - b for n, b in zip(nodes, before, strict=False)]
                rows.append((count, wall, per_minute, mean_wer, " / ".join(map(str, ran))))
                print(f"{count} instance(s): {args.tasks} tasks in {wall:.1f} s = "
                      f"{per_minute:.1f} tasks/min, mean WER {mean_wer:.3f}", flush=True)
        finally:
            proxy.stop()
            for node in nodes:
                node.stop()
            redis.stop()
    load_after = uptime()
    base = rows[0][2]
    lines = [f"# File tasks across a cluster (Whisper tiny.en, {args.tasks} tasks per batch)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.machine()} · {os.cpu_count()} cores · "
             f"Python {platform.python_version()}", "",
             f"Load: before `{load_before}`; after `{load_after}`.", "",
             "**This machine has 2 cores shared with other work**: every instance runs on the same "
             "two cores, so more instances cannot add CPU here; the numbers show that the queue "
             "spreads tasks over instances and what the sharing costs, not the scaling of a "
             "real cluster (one instance per two cores on separate machines, where throughput "
             "grows with the instances' cores).", "",
             "| instances | wall s | tasks / min | / one instance | tasks run per instance | mean WER |",
             "|---|---|---|---|---|---|"]
    for count, wall, per_minute, mean_wer, ran in rows:
        lines.append(f"| {count} | {wall:.1f} | {per_minute:.1f} | {per_minute / base:.2f}× | {ran} "
                     f"| {mean_wer:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
