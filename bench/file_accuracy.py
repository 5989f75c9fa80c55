#!/usr/bin/env python3
"""Files: is every way the hub decodes a file as accurate as the bare engine's standard decode?

Issue 14 asks that file transcripts be "never worse than the bare engine's standard decode".
The long bench recording of ``bench/long_file.py`` repeats one 43 s round of clips, so a path's
WER there is mostly one decode's luck repeated 25-250 times. This bench adds a recording with
no repeats (every trustworthy English testdata clip once, 0.3-2 s apart: ``varied``), the 5- and
20.7-minute bench recordings, and counts errors over all of them. Side by side in one process,
on the same samples:

- ``bare``: faster-whisper's ``WhisperModel.transcribe`` on the whole array, every core on the
  one decode, beam 1, language given, not conditioned on previous text (the hub's settings).
- ``asrhub transcribe``: what the CLI does (:func:`asrhub.pieces.transcribe_file`: 120 s pieces cut
  at quiet points, one per decode lane side by side, the engine at its defaults).
- ``batched pipeline``: ``asrhub transcribe`` as it was before (``file_batch_size = 8``:
  faster-whisper's batched pipeline on each 120 s piece, its chunks split across the lanes).
- ``file protocol pieces``: what the 8767 file protocol sends the engine with diarization off
  (the VAD's speech regions merged by :func:`asrhub.segmenter.plan_pieces` into pieces of at most
  ``piece_seconds`` = 20 s, cut at the quietest point, side by side; pieces of up to 20 s take the
  utterance path: one decode without timestamps).
- ``... (no redo)``: the same with the redo of a decode that stopped after its first sentence
  switched off (``TRUNCATED_MIN_S`` out of reach): what that check is worth.

Prints the table and writes ``bench/results/file_accuracy.md`` (``--out -``: nowhere).

    .venv/bin/python bench/file_accuracy.py --model tiny.en
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, bench/ is sys.path[0] and bench/wyoming.py would shadow the wyoming package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from asrhub.audio import decode_file  # noqa: E402
from asrhub.heap import limit_arenas  # noqa: E402
from asrhub.pieces import FILE_PIECE_S, PieceReader, transcribe_file  # noqa: E402
from asrhub.segmenter import plan_pieces, quietest_point  # noqa: E402
from asrhub.testing import make_hub, wer  # noqa: E402
from asrhub.text import join_texts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000


def bench_module(name: str) -> Any:
    """Another bench script of this folder, imported by path (bench/ is not on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclasses
    spec.loader.exec_module(module)
    return module


def trustworthy_english() -> list[Any]:
    """bench/accuracy.py's clips: English recordings whose transcripts NOTES.tsv trusts."""
    return list(bench_module("accuracy").load_clips(("en",)))


def varied(folder: Path) -> tuple[Path, str]:
    import soundfile as sf

    rng = np.random.default_rng(1)
    parts, refs = [], []
    for clip in trustworthy_english():
        parts += [clip.audio, np.zeros(int(RATE * rng.uniform(0.3, 2.0)), np.float32)]
        refs.append(clip.reference)
    path = folder / "varied.wav"
    sf.write(str(path), np.concatenate(parts), RATE, subtype="PCM_16")
    return path, " ".join(refs)


def variants(model: str) -> dict[str, Callable[[Path, np.ndarray], str]]:
    from faster_whisper import WhisperModel

    from asrhub_plugins.whisper import engine as whisper_engine

    hub = make_hub({"engines": {"whisper": {"model": model, "language": "en"}}}, only=[])
    engine = hub.engine_sync("asr")
    vad = hub.engine_sync("vad")
    bare = WhisperModel(str(engine.model_path), device="cpu", compute_type="int8",
                        cpu_threads=len(os.sched_getaffinity(0)), num_workers=1,
                        local_files_only=True)

    def run_bare(path: Path, audio: np.ndarray) -> str:
        segments, _ = bare.transcribe(audio, language="en", beam_size=engine.settings.beam_size,
                                      condition_on_previous_text=False)
        return join_texts([s.text.strip() for s in segments])

    def run_cli(path: Path, audio: np.ndarray) -> str:
        with PieceReader(path, FILE_PIECE_S) as reader:
            return transcribe_file(engine, reader, language="en", lanes=engine.num_workers).text

    def file_protocol(redo: bool) -> Callable[[Path, np.ndarray], str]:
        def run(path: Path, audio: np.ndarray) -> str:
            regions = [(int(a), int(b)) for a, b in vad.speech_regions(audio)]
            pieces = plan_pieces(regions, len(audio), max_len=20 * RATE,
                                 split=lambda lo, hi: quietest_point(audio, lo, hi))
            kept = whisper_engine.TRUNCATED_MIN_S
            whisper_engine.TRUNCATED_MIN_S = kept if redo else float("inf")
            try:
                with ThreadPoolExecutor(engine.num_workers) as pool:
                    texts = pool.map(lambda p: engine.transcribe(audio[p.start:p.end], language="en").text,
                                     pieces)
                    return join_texts(list(texts))
            finally:
                whisper_engine.TRUNCATED_MIN_S = kept
        return run

    batched_hub = make_hub({"engines": {"whisper": {"model": model, "language": "en",
                                                    "file_batch_size": 8}}}, only=[])
    batched = batched_hub.engine_sync("asr")

    def run_batched(path: Path, audio: np.ndarray) -> str:
        with PieceReader(path, FILE_PIECE_S) as reader:
            return transcribe_file(batched, reader, language="en").text

    return {"bare": run_bare, "asrhub transcribe": run_cli, "batched pipeline": run_batched,
            "file protocol pieces": file_protocol(True),
            "file protocol pieces (no redo)": file_protocol(False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--minutes", default="5,20", help="bench recordings to add (minutes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "file_accuracy.md"))
    args = parser.parse_args()
    limit_arenas()  # as `asrhub serve` does
    long_file = bench_module("long_file")  # its recordings (built under bench/_work/, reused)
    import tempfile

    load_before = os.getloadavg()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory() as folder:
        files = [varied(Path(folder))] + [long_file.build(float(m)) for m in args.minutes.split(",") if m]
        runs = variants(args.model)
        rows = ["| file | audio s | words | " + " | ".join(runs) + " |",
                "|---|---|---|" + "---|" * len(runs)]
        totals = {name: [0.0, 0.0] for name in runs}  # errors, seconds
        words = 0
        for path, reference in files:
            audio = decode_file(path)
            n = len(reference.split())
            words += n
            cells = []
            for name, run in runs.items():
                begun = time.perf_counter()
                text = run(path, audio)
                spent = time.perf_counter() - begun
                score = wer(reference, text)
                totals[name][0] += score * n
                totals[name][1] += spent
                cells.append(f"{score * 100:.2f} % ({spent:.1f} s)")
                print(f"{path.name}: {name}: WER {score * 100:.2f} %, {spent:.1f} s", flush=True)
            rows.append(f"| {path.name} | {len(audio) / RATE:.0f} | {n} | " + " | ".join(cells) + " |")
        rows.append(f"| **all** | | {words} | " + " | ".join(
            f"**{errors / words * 100:.2f} %** ({spent:.1f} s)" for errors, spent in totals.values()) + " |")
    table = "\n".join(rows)
    print(table)
    if args.out == "-":
        return
    section = (f"## Whisper {args.model}\n\n{started} · {platform.machine()} · {os.cpu_count()} cores · "
               f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n\n"
               f"`.venv/bin/python bench/file_accuracy.py {' '.join(sys.argv[1:])}`\n\n"
               "WER (and seconds) per file; the last row counts errors over all files' words.\n\n"
               f"{table}\n")
    out = Path(args.out)
    title = "# Files: every decoding path against the bare engine (bench/file_accuracy.py)\n"
    intro = "\n\n".join(__doc__.split("\n\n")[1:4]) + "\n"
    earlier = out.read_text().split("\n## ", 1) if out.exists() else []
    rest = ("\n## " + earlier[1]) if len(earlier) == 2 else ""
    out.write_text(f"{title}\n{intro}\n{section}{rest}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
