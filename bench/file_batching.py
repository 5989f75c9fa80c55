#!/usr/bin/env python3
"""Files: does a batched pipeline beat sequential decoding on CPU at equal WER?

Issue 14 asks for a batched pipeline for long files "where it beats sequential decoding on CPU
at equal WER (measure, then decide)". This measures it, side by side in one process, on the same
model files, the same samples and the same settings (int8, the hub's ``cpu_threads``, beam 1,
language given, not conditioned on previous text):

- ``sequential``: faster-whisper's ``WhisperModel.transcribe`` (30 s windows one after another,
  seeking by timestamps), no VAD filter: what the bare engine does.
- ``sequential+vad``: the same with faster-whisper's Silero VAD filter (silence never decoded).
- ``batched N``: faster-whisper's ``BatchedInferencePipeline`` (Silero VAD cuts speech into
  chunks of up to 30 s, N chunks per encoder/decoder call, no timestamps), N = 4, 8, 16.
- ``asrhub``: the hub's Whisper engine (``hub.engine_sync("asr").transcribe``: what ``asrhub
  transcribe``, the OpenAI API and file transcription call).

The files are real testdata recordings joined with short pauses (the ones
``bench/hub_overhead.py`` builds, plus a longer one). Every variant runs each file ``--repeats``
times, the order of variants alternating run by run; the fastest run counts. CPU seconds are the
process's user + system time over the call (both cores count). Prints the table and writes
``bench/results/file_batching.md``.

    .venv/bin/python bench/file_batching.py --model tiny.en
    .venv/bin/python bench/file_batching.py --model base --append
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
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


def variants(model_name: str) -> dict[str, Callable[[np.ndarray], str]]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from asrhub.config import parse_config
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager
    from asrhub_plugins.whisper.models import resolve_model
    from asrhub_plugins.whisper.settings import WhisperSettings

    settings = WhisperSettings(model=model_name, language="en")
    path = resolve_model(model_name, parse_config({}).state_dir)
    model = WhisperModel(str(path), device="cpu", compute_type=settings.compute_type,
                         cpu_threads=settings.cpu_threads, num_workers=settings.num_workers,
                         local_files_only=True)
    common = {"language": "en", "beam_size": 1, "condition_on_previous_text": False}

    def sequential(vad: bool) -> Callable[[np.ndarray], str]:
        def run(audio: np.ndarray) -> str:
            segments, _ = model.transcribe(audio, vad_filter=vad, **common)
            return " ".join(s.text.strip() for s in segments)
        return run

    pipeline = BatchedInferencePipeline(model)

    def batched(size: int) -> Callable[[np.ndarray], str]:
        def run(audio: np.ndarray) -> str:
            segments, _ = pipeline.transcribe(audio, batch_size=size, without_timestamps=True,
                                              **common)
            return " ".join(s.text.strip() for s in segments)
        return run

    hub = Hub(parse_config({"engines": {"whisper": {"model": model_name, "language": "en"}}}),
              make_plugin_manager())
    engine = hub.engine_sync("asr")

    def asrhub(audio: np.ndarray) -> str:
        return engine.transcribe(audio, language="en").text

    out = {"sequential": sequential(False), "sequential+vad": sequential(True)}
    out.update({f"batched {n}": batched(n) for n in BATCH_SIZES})
    out["asrhub"] = asrhub
    return out


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(model: str, files: list[dict[str, Any]], repeats: int) -> dict[str, dict[str, Any]]:
    runs = variants(model)
    warm = decode_file(files[0]["path"])
    for run in runs.values():
        run(warm)
    results: dict[str, dict[str, Any]] = {name: {} for name in runs}
    for file in files[1:]:
        audio = decode_file(file["path"])
        order = list(runs.items())
        for repeat in range(repeats):
            for name, run in order if repeat % 2 == 0 else order[::-1]:
                cpu, wall = cpu_now(), time.perf_counter()
                text = run(audio)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                             / "file_batching.md"))
    parser.add_argument("--append", action="store_true", help="add a section to --out")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory() as folder:
        files = make_files(Path(folder)) + [long_file(Path(folder), args.minutes)]
        results = measure(args.model, files, args.repeats)
    lines = table(files, results)
    print("\n".join(lines))
    section = [f"## Whisper {args.model}", "",
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
