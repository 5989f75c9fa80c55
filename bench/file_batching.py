#!/usr/bin/env python3
"""Files: does a batched pipeline beat sequential decoding on CPU at equal WER?

Issue 14 asks for a batched pipeline for long files "where it beats sequential decoding on CPU
at equal WER (measure, then decide)". This measures it, side by side in one process, on the same
model files, the same samples and the same settings (int8, every core on the bare decode, beam 1,
language given, not conditioned on previous text):

- ``sequential``: faster-whisper's ``WhisperModel.transcribe`` (30 s windows one after another,
  seeking by timestamps), no VAD filter: what the bare engine does.
- ``sequential+vad``: the same with faster-whisper's Silero VAD filter (silence never decoded).
- ``batched N``: faster-whisper's ``BatchedInferencePipeline`` (Silero VAD cuts speech into
  chunks of up to 30 s, N chunks per encoder/decoder call, no timestamps), N = 4, 8, 16.
- ``asrhub``: the hub's Whisper engine at its defaults (``hub.engine_sync("asr").transcribe`` on
  the whole file: one decode lane, one thread). Since the 2026-11-29 22:00 run it is the
  sequential decoder (``file_batch_size`` auto = 1 on the CPU).
- ``asrhub batched 8``: the same engine with ``file_batch_size = 8`` (the default before): the
  batched pipeline, its chunks split across the decode lanes.
- ``asrhub pieces``: what ``asrhub transcribe`` does (:func:`asrhub.pieces.transcribe_file`): the
  file read in 120 s pieces cut at quiet points, one piece per decode lane side by side, each
  decoded sequentially (file decoding included in its time).

``--live``: does a live stream suffer while a long file transcribes? In one hub (its inference
executor, as the servers use it), the long file is transcribed over and over at batch priority
(as the file protocols do) while live streams (``engine.open_stream``, fed testdata utterances
in 64 ms chunks at real-time pace, at live priority) each end with ``finish``; the time from
``finish`` to the final is the stop -> final latency. Measured alone, beside the sequential file
path and beside the batched one (``--live-sizes``).

The files are real testdata recordings joined with short pauses (the ones
``bench/hub_overhead.py`` builds, plus a longer one). Every variant runs each file ``--repeats``
times, the order of variants alternating run by run; the fastest run counts. CPU seconds are the
process's user + system time over the call (both cores count). Prints the table and writes
``bench/results/file_batching.md``.

    .venv/bin/python bench/file_batching.py --model tiny.en
    .venv/bin/python bench/file_batching.py --model base --append
    .venv/bin/python bench/file_batching.py --model tiny.en --live --append
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_overhead import OTHER, READER, make_files  # noqa: E402

from asrhub.audio import decode_file  # noqa: E402
from asrhub.pieces import FILE_PIECE_S, PieceReader, transcribe_file  # noqa: E402
from asrhub.testing import manifest, testdata_dir, wer  # noqa: E402

RATE = 16000
BATCH_SIZES = (4, 8, 16)


def long_file(folder: Path, minutes: float) -> dict[str, Any]:
    """Testdata recordings (reader and other speakers) joined with 0.5-1.5 s pauses, about
    ``minutes`` long."""
    import soundfile as sf

    rows = manifest()
    rng = np.random.default_rng(7)
    names = READER + OTHER
    parts, refs, total = [], [], 0
    while total < minutes * 60 * RATE:
        name = names[len(refs) % len(names)]
        audio = decode_file(testdata_dir() / name)
        pause = (rng.standard_normal(int(RATE * rng.uniform(0.5, 1.5))) * 1e-4).astype(np.float32)
        parts += [audio, pause]
        refs.append(rows[name]["transcript"])
        total += len(audio) + len(pause)
    path = folder / f"long_{minutes:g}min.wav"
    sf.write(str(path), np.concatenate(parts), RATE, subtype="PCM_16")
    return {"name": path.name, "path": str(path), "seconds": round(total / RATE, 1),
            "reference": " ".join(refs)}


def variants(model_name: str) -> dict[str, Callable[[np.ndarray, str], str]]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from asrhub.config import parse_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager
    from asrhub_plugins.whisper.models import resolve_model

    path = resolve_model(model_name, parse_config({}).state_dir)
    # The bare engine as one would run it for one file: every core on its one decode.
    model = WhisperModel(str(path), device="cpu", compute_type="int8",
                         cpu_threads=len(os.sched_getaffinity(0)), num_workers=1,
                         local_files_only=True)
    common = {"language": "en", "beam_size": 1, "condition_on_previous_text": False}

    def sequential(vad: bool) -> Callable[[np.ndarray, str], str]:
        def run(audio: np.ndarray, path: str) -> str:
            segments, _ = model.transcribe(audio, vad_filter=vad, **common)
            return " ".join(s.text.strip() for s in segments)
        return run

    pipeline = BatchedInferencePipeline(model)

    def batched(size: int) -> Callable[[np.ndarray, str], str]:
        def run(audio: np.ndarray, path: str) -> str:
            segments, _ = pipeline.transcribe(audio, batch_size=size, without_timestamps=True,
                                              **common)
            return " ".join(s.text.strip() for s in segments)
        return run

    def hub_engine(**whisper: Any) -> Any:
        hub = Hub(parse_config({"engines": {"whisper": {"model": model_name, "language": "en",
                                                        **whisper}}}), make_plugin_manager())
        return hub.engine_sync("asr")

    def whole(engine: Any) -> Callable[[np.ndarray, str], str]:
        def run(audio: np.ndarray, path: str) -> str:
            return engine.transcribe(audio, language="en").text
        return run

    def pieces(engine: Any) -> Callable[[np.ndarray, str], str]:
        def run(audio: np.ndarray, path: str) -> str:
            with PieceReader(path, FILE_PIECE_S) as reader:
                return transcribe_file(engine, reader, language="en",
                                       lanes=engine.num_workers).text
        return run

    out = {"sequential": sequential(False), "sequential+vad": sequential(True)}
    out.update({f"batched {n}": batched(n) for n in BATCH_SIZES})
    default = hub_engine()
    out["asrhub"] = whole(default)
    out["asrhub batched 8"] = whole(hub_engine(file_batch_size=8))
    out["asrhub pieces"] = pieces(default)
    return out


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(model: str, files: list[dict[str, Any]], repeats: int) -> dict[str, dict[str, Any]]:
    runs = variants(model)
    warm = decode_file(files[0]["path"])
    for run in runs.values():
        run(warm, files[0]["path"])
    results: dict[str, dict[str, Any]] = {name: {} for name in runs}
    for file in files[1:]:
        audio = decode_file(file["path"])
        order = list(runs.items())
        for repeat in range(repeats):
            for name, run in order if repeat % 2 == 0 else order[::-1]:
                cpu, wall = cpu_now(), time.perf_counter()
                text = run(audio, file["path"])
                wall, cpu = time.perf_counter() - wall, cpu_now() - cpu
                best = results[name].get(file["name"])
                if best is None or wall < best["wall"]:
                    results[name][file["name"]] = {"wall": wall, "cpu": cpu, "text": text,
                                                   "wer": wer(file["reference"], text)}
            print(f"  {file['name']}: run {repeat + 1} of {repeats} done", flush=True)
    return results


def table(files: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| file | audio s | variant | wall s | RTF | CPU s / audio s | wall / sequential "
             "| WER | WER / sequential |", "|---|---|---|---|---|---|---|---|---|"]
    for file in files[1:]:
        seq = results["sequential"][file["name"]]
        for name, per_file in results.items():
            r = per_file[file["name"]]
            lines.append(
                f"| {file['name']} | {file['seconds']:.0f} | {name} | {r['wall']:.2f} "
                f"| {r['wall'] / file['seconds']:.4f} | {r['cpu'] / file['seconds']:.4f} "
                f"| {r['wall'] / seq['wall']:.2f}× | {r['wer']:.3f} "
                f"| {r['wer'] / seq['wer'] if seq['wer'] else float('nan'):.2f}× |")
    totals = ["", "All files together (audio-weighted WER is words-weighted over the files):", "",
              "| variant | wall s | wall / sequential | CPU s | WER |", "|---|---|---|---|---|"]
    seq_wall = sum(results["sequential"][f["name"]]["wall"] for f in files[1:])
    words = {f["name"]: len(f["reference"].split()) for f in files[1:]}
    for name, per_file in results.items():
        wall = sum(per_file[f["name"]]["wall"] for f in files[1:])
        cpu = sum(per_file[f["name"]]["cpu"] for f in files[1:])
        errors = sum(per_file[f["name"]]["wer"] * words[f["name"]] for f in files[1:])
        totals.append(f"| {name} | {wall:.2f} | {wall / seq_wall:.2f}× | {cpu:.1f} "
                      f"| {errors / sum(words.values()):.3f} |")
    return lines + totals


# ----------------------------------------------------------------------- --live

LIVE_CHUNK = 1024  # 64 ms, as the streaming clients send


async def live_utterances(executor: Any, engine: Any, clips: list[tuple[np.ndarray, str]]
                          ) -> list[dict[str, float]]:
    """Each clip as one live stream at real-time pace; stop -> final latency and WER."""
    from asrhub.executor import Priority

    out = []
    for audio, reference in clips:
        stream = await executor.run(engine.open_stream, language="en", priority=Priority.LIVE,
                                    flow="live")
        started = time.perf_counter()
        for sent in range(0, len(audio), LIVE_CHUNK):
            await executor.run(stream.accept, audio[sent:sent + LIVE_CHUNK],
                               priority=Priority.LIVE, flow="live")
            ahead = started + (sent + LIVE_CHUNK) / RATE - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        stop = time.perf_counter()
        finals = await executor.run(stream.finish, priority=Priority.LIVE, flow="live")
        latency = time.perf_counter() - stop
        text = " ".join(h.text for h in finals if h.is_final)
        out.append({"latency": latency, "wer": wer(reference, text)})
    return out


async def live_phase(executor: Any, engine: Any, clips: list[tuple[np.ndarray, str]],
                     file_audio: np.ndarray | None) -> dict[str, Any]:
    from asrhub.executor import Priority

    done = asyncio.Event()
    files = 0

    async def file_loop() -> None:
        nonlocal files
        while not done.is_set():
            await executor.run(engine.transcribe, file_audio, language="en",
                               priority=Priority.BATCH, flow="file")
            files += 1

    task = asyncio.create_task(file_loop()) if file_audio is not None else None
    if task is not None:
        await asyncio.sleep(1.0)  # the file is well into its first call
    results = await live_utterances(executor, engine, clips)
    done.set()
    if task is not None:
        await task
    latencies = sorted(r["latency"] for r in results)
    return {"median": statistics.median(latencies), "max": latencies[-1],
            "wer": statistics.mean(r["wer"] for r in results), "n": len(results), "files": files}


def measure_live(model: str, file: dict[str, Any], sizes: list[int], rounds: int) -> list[str]:
    from asrhub.config import parse_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager

    rows = manifest()
    clips = [(decode_file(testdata_dir() / name), rows[name]["transcript"])
             for name in (READER * rounds)]
    file_audio = decode_file(file["path"])
    lines = [f"Live streams (one at a time, {len(clips)} utterances of "
             f"{sum(len(a) for a, _ in clips) / RATE / len(clips):.1f} s on average) beside "
             f"{file['name']} ({file['seconds']:.0f} s) transcribed over and over at batch "
             "priority:", "",
             "| file path | stop -> final median s | max s | final WER | files done |",
             "|---|---|---|---|---|"]
    for label, size in [("no file (alone)", None)] + [
            (f"file_batch_size {abs(n)}" + (" (sequential)" if n == 1 else "")
             + (", never yielding to live streams" if n < 0 else ""), n) for n in sizes]:
        hub = Hub(parse_config({"engines": {"whisper": {"model": model, "language": "en",
                                                        "file_batch_size": abs(size or 1)}}}),
                  make_plugin_manager())
        engine = hub.engine_sync("asr")
        if size is not None and size < 0:  # the batch size without the engine's live check
            engine.file_batch_now = lambda size=-size: size
        executor = hub.make_executor()
        engine.transcribe(file_audio[:RATE * 40], language="en")  # warm
        result = asyncio.run(live_phase(executor, engine, clips,
                                        None if size is None else file_audio))
        print(f"  {label}: {result}", flush=True)
        lines.append(f"| {label} | {result['median']:.2f} | {result['max']:.2f} "
                     f"| {result['wer']:.3f} | {result['files'] if size else '-'} |")
        hub.unload_engines()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                             / "file_batching.md"))
    parser.add_argument("--append", action="store_true", help="add a section to --out")
    parser.add_argument("--live", action="store_true",
                        help="stop -> final of live streams beside a long file instead")
    parser.add_argument("--live-sizes", default="1,8",
                        help="file_batch_size values (--live); negative: never yield to live "
                             "streams (what the engine's live check saves)")
    parser.add_argument("--live-rounds", type=int, default=1,
                        help="rounds of the 5 reader clips as live utterances (--live)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory() as folder:
        if args.live:
            lines = measure_live(args.model, long_file(Path(folder), args.minutes),
                                 [int(n) for n in args.live_sizes.split(",")], args.live_rounds)
        else:
            files = make_files(Path(folder)) + [long_file(Path(folder), args.minutes)]
            lines = table(files, measure(args.model, files, args.repeats))
    print("\n".join(lines))
    title = f"## Whisper {args.model}" + (": live streams beside a long file" if args.live else "")
    section = [title, "",
               f"{started} · {platform.machine()} · {os.cpu_count()} cores · Python "
               f"{platform.python_version()} · load average before "
               f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
               f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}", "",
               "```", ".venv/bin/python " + shlex.join(sys.argv), "```", "", *lines, ""]
    out = Path(args.out)
    header = ["# Files: batched pipeline vs sequential decoding on CPU (bench/file_batching.py)", "",
              *[line for line in (__doc__ or "").split("\n\n")[1].splitlines()], ""]
    old = out.read_text() if args.append and out.exists() else "\n".join(header) + "\n"
    out.write_text(old + "\n".join(section) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
