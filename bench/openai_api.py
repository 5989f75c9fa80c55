#!/usr/bin/env python3
"""The OpenAI-compatible API (port 8080) against the hub's other ways in, in one run.

Files: the same recording through

  (a) engine   the hub's shared ASR engine on the decoded file (``engine.transcribe``);
  (b) cli      ``asrhub transcribe FILE`` as a fresh process (start-up and model load included,
               as a user runs it);
  (c) api      ``client.audio.transcriptions.create`` (official SDK) against a real server on
               loopback: upload, spooling, piece decoding, VAD, one engine call per stretch of
               speech, response.

(a) and (c) run in this process, alternating run by run; (b) between them. The fastest of
``--repeats`` runs counts (after a warm-up); ratios are printed side by side.

Realtime: N concurrent transcription sessions (GA events, server VAD), each sending a recording
at real-time pace in 100 ms chunks of 24 kHz PCM16. Per item: end of speech (the time the last
sample of the utterance was sent) → ``…transcription.completed``, and the server's own
``speech_stopped`` → ``completed``; p50/p95/max over all items of all sessions.

    .venv/bin/python bench/openai_api.py --model tiny.en --repeats 2 --streams 1,2,4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
import soxr

from asrhub.testing import make_hub, manifest, running_server, testdata_dir, wer

RATE = 16000
READER = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
          "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
          "en/pocketsphinx_librivox_ss01_0930.wav"]
TOKEN = "bench"
RESULTS = Path(__file__).resolve().parent / "results" / "openai_api.md"


def clip(name: str, rate: int) -> np.ndarray:
    audio, sr = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return np.ascontiguousarray(soxr.resample(mono, sr, rate) if sr != rate else mono, np.float32)


def recording(names: list[str], rate: int, gap_s: float) -> tuple[np.ndarray, list[float]]:
    """The clips with gaps; and where each clip's speech ends (seconds)."""
    parts, ends, at = [], [], 0.0
    gap = np.zeros(int(gap_s * rate), np.float32)
    for name in names:
        audio = clip(name, rate)
        parts += [audio, gap]
        at += len(audio) / rate
        ends.append(at)
        at += gap_s
    return np.concatenate(parts), ends


def reference(names: list[str]) -> str:
    rows = manifest()
    return " ".join(rows[n]["transcript"] for n in names)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return Path("/proc/loadavg").read_text().strip()


def sections(model: str) -> dict[str, Any]:
    return {"server": {"token": TOKEN},
            "engines": {"asr": "whisper", "vad": "silero", "whisper": {"model": model, "language": "en"}}}


def write_config(tmp: Path, model: str) -> Path:
    path = tmp / "asrhub.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp / "state"}"\n[engines]\nasr = "whisper"\n'
                    f'[engines.whisper]\nmodel = "{model}"\nlanguage = "en"\n')
    return path


# ----------------------------------------------------------------------------- files


async def bench_files(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from openai import AsyncOpenAI

    from asrhub.audio import decode_file

    names = READER * args.file_copies
    audio, _ = recording(names, RATE, 1.0)
    path = tmp / "reading.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    seconds = len(audio) / RATE
    ref = reference(names)
    config = write_config(tmp, args.model)
    exe = Path(sys.executable).parent / "asrhub"
    times: dict[str, list[float]] = {"engine": [], "cli": [], "api": []}
    texts: dict[str, str] = {}
    hub = make_hub(sections(args.model), only=["openai_api"])
    async with running_server(hub, preload=True) as server:
        client = AsyncOpenAI(api_key=TOKEN, max_retries=0, timeout=600,
                             base_url=f"http://127.0.0.1:{server.ports['openai_api']}/v1")
        engine = await hub.asr()
        data = path.read_bytes()

        def run_engine() -> str:
            return engine.transcribe(decode_file(path), language="en").text

        async def run_api() -> str:
            result = await client.audio.transcriptions.create(model="whisper-1",
                                                              file=("reading.wav", data))
            return result.text

        def run_cli() -> str:
            done = subprocess.run([str(exe), "transcribe", "--config", str(config), str(path)],
                                  capture_output=True, text=True, check=True)
            return done.stdout

        await hub.executor.run(run_engine)  # warm-up
        await run_api()
        for _ in range(args.repeats):
            for variant in ("engine", "cli", "api"):
                started = time.perf_counter()
                if variant == "engine":
                    text = await hub.executor.run(run_engine)
                elif variant == "cli":
                    text = await asyncio.to_thread(run_cli)
                else:
                    text = await run_api()
                times[variant].append(time.perf_counter() - started)
                texts[variant] = text
    best = {k: min(v) for k, v in times.items()}
    return {"seconds": seconds, "best": best, "wer": {k: wer(ref, t) for k, t in texts.items()}}


# ----------------------------------------------------------------------------- realtime


async def one_session(url: str, audio24: np.ndarray, ends: list[float], chunk_s: float,
                      out: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                       max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad"}}}}}))
        stopped: dict[str, float] = {}
        completed: dict[str, tuple[float, str]] = {}
        committed: list[str] = []
        done = asyncio.Event()

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                now = time.perf_counter()
                kind = event["type"]
                if kind == "input_audio_buffer.speech_stopped":
                    stopped[event["item_id"]] = now
                elif kind == "input_audio_buffer.committed":
                    committed.append(event["item_id"])
                elif kind.endswith("transcription.completed"):
                    completed[event["item_id"]] = (now, event["transcript"])
                    if len([c for c in completed.values() if c[1]]) >= len(ends):
                        done.set()
                elif kind == "error":
                    out.setdefault("errors", []).append(event["error"])

        reader = asyncio.create_task(receive())
        step = int(chunk_s * 24000)
        started = time.perf_counter()
        for index, begin in enumerate(range(0, len(audio24), step)):
            delay = started + index * chunk_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pcm = (np.clip(audio24[begin:begin + step], -1, 1) * 32767).astype("<i2").tobytes()
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm).decode()}))
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            out["timed_out"] = True  # reported: items completed fall short of the clips
        finally:
            reader.cancel()
        spoken = [i for i in committed if completed.get(i, (0, ""))[1]]
        # Items in order match the clips when each clip was one item (else: counted, not timed).
        out["items"] = len(spoken)
        out["matched"] = len(spoken) == len(ends)
        out["end_to_completed"] = ([completed[i][0] - (started + end)
                                    for i, end in zip(spoken, ends, strict=True)]
                                   if out["matched"] else [])
        out["stopped_to_completed"] = [completed[i][0] - stopped[i] for i in spoken if i in stopped]
        out["text"] = " ".join(completed[i][1] for i in spoken)


async def direct_stream(hub: Any, audio16: np.ndarray, ends: list[float], chunk_s: float,
                        out: dict[str, Any]) -> None:
    """Baseline: the same audio straight into the hub's streaming path (engine stream + the
    hub's VAD, driven by StreamPump), no protocol: end of speech → final hypothesis."""
    from asrhub.streaming import StreamPump

    asr, vad = await hub.asr(), await hub.vad()
    stream = await hub.executor.run(lambda: asr.open_stream(language="en", vad=vad.open_stream()))
    finals: list[float] = []

    async def on_hyps(hyps: list[Any]) -> None:
        now = time.perf_counter()
        finals.extend(now for h in hyps if h.is_final and h.text.strip())

    pump = StreamPump(hub.executor, stream, on_hyps, engine=hub.engine_name("asr"))
    step = int(chunk_s * RATE)
    started = time.perf_counter()
    for index, begin in enumerate(range(0, len(audio16), step)):
        delay = started + index * chunk_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pump.feed(audio16[begin:begin + step])
    for _ in range(600):
        if len(finals) >= len(ends):
            break
        await asyncio.sleep(0.1)
    await pump.close()
    out["items"] = len(finals)
    out["end_to_completed"] = ([t - (started + e) for t, e in zip(finals, ends, strict=True)]
                               if len(finals) == len(ends) else [])


async def bench_realtime(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = READER[:3]
    audio24, ends = recording(names, 24000, 1.2)
    audio24 = np.concatenate([audio24, np.zeros(24000, np.float32)])
    ref = reference(names)
    rows = []
    hub = make_hub(sections(args.model), only=["openai_api"])
    async with running_server(hub, preload=True) as server:
        url = f"ws://127.0.0.1:{server.ports['openai_api']}/v1/realtime?intent=transcription"
        for streams in args.streams:
            outs: list[dict[str, Any]] = [{} for _ in range(streams)]
            await asyncio.gather(*(one_session(url, audio24, ends, 0.1, out) for out in outs))
            end = [v for o in outs for v in o.get("end_to_completed", [])]
            stop = [v for o in outs for v in o.get("stopped_to_completed", [])]
            completed = sum(o.get("items", 0) for o in outs)
            rows.append({"streams": streams, "items": completed, "expected": streams * len(ends),
                         "timed": len(end),
                         "end_p50": percentile(end, 50), "end_p95": percentile(end, 95),
                         "end_max": max(end) if end else float("nan"),
                         "stop_p50": percentile(stop, 50), "stop_p95": percentile(stop, 95),
                         "wer": float(np.mean([wer(ref, o.get("text", "")) for o in outs])),
                         "errors": sum(len(o.get("errors", [])) for o in outs)})
            print(rows[-1], flush=True)
            direct: list[dict[str, Any]] = [{} for _ in range(streams)]
            audio16 = soxr.resample(audio24, 24000, RATE).astype(np.float32)
            await asyncio.gather(*(direct_stream(hub, audio16, ends, 0.1, out) for out in direct))
            base = [v for o in direct for v in o.get("end_to_completed", [])]
            rows[-1].update(base_items=sum(o.get("items", 0) for o in direct),
                            base_p50=percentile(base, 50), base_p95=percentile(base, 95))
            print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--file-copies", type=int, default=2, help="reader clips repeated")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="asrhub-bench-openai-") as tmp:
        files = asyncio.run(bench_files(args, Path(tmp)))
    realtime = asyncio.run(bench_realtime(args))
    load_after = uptime()
    best, seconds = files["best"], files["seconds"]
    lines = [f"# OpenAI-compatible API (model {args.model})", "",
             f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.machine()} · {os.cpu_count()} cores · "
             f"Python {platform.python_version()} · fastest of {args.repeats} runs after a warm-up",
             "", f"Load: before `{load_before}`; after `{load_after}` (the CPU is shared with other "
             "work: compare the columns of one row, not runs on different days).", "",
             f"## One file ({seconds:.1f} s of reading, WAV), three ways in", "",
             "| way | wall s | RTF | / engine | WER |", "|---|---|---|---|---|"]
    labels = {"engine": "(a) hub engine (`engine.transcribe`)",
              "cli": "(b) `asrhub transcribe` (new process: start + model load included)",
              "api": "(c) `/v1/audio/transcriptions` (SDK, loopback)"}
    for key in ("engine", "cli", "api"):
        lines.append(f"| {labels[key]} | {best[key]:.2f} | {best[key] / seconds:.4f} | "
                     f"{best[key] / best['engine']:.2f}× | {files['wer'][key]:.3f} |")
    lines += ["", "## Realtime transcription sessions at real-time pace (server VAD)", "",
              "End of speech = when the utterance's last sample was sent; the server's VAD needs "
              "its silence (500 ms by default) before it can end the item.", "",
              "Baseline: the same audio, same pacing, straight into the hub's streaming path "
              "(engine stream + VAD through StreamPump, no protocol, no socket), run right after "
              "each row: end of speech → final hypothesis.", "",
              "| streams | items completed (timed) | end of speech → completed p50 / p95 / max s | "
              "speech_stopped → completed p50 / p95 s | mean WER | errors | baseline p50 / p95 s |",
              "|---|---|---|---|---|---|---|"]
    for row in realtime:
        lines.append(f"| {row['streams']} | {row['items']}/{row['expected']} ({row['timed']}) | "
                     f"{row['end_p50']:.2f} / {row['end_p95']:.2f} / {row['end_max']:.2f} | "
                     f"{row['stop_p50']:.2f} / {row['stop_p95']:.2f} | {row['wer']:.3f} | "
                     f"{row['errors']} | {row['base_p50']:.2f} / {row['base_p95']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
