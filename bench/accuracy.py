#!/usr/bin/env python3
"""Accuracy: the bare engine against asrhub (full 30 s window, and its defaults), offline and
streaming, over every English and Chinese recording in testdata with a trustworthy transcript.

Systems (same model, same audio, beam 1, language given from the manifest):

- ``bare``: faster-whisper's ``WhisperModel.transcribe`` (its standard decode: 30 s windows,
  timestamps, temperature fallback, conditioning on previous text), no asrhub code at all.
- ``full``: asrhub's Whisper engine with ``adaptive_window = false`` (Whisper's 30 s window).
- ``default``: asrhub's Whisper engine with its default settings.

Each hub system is run offline (``engine.transcribe``, what ``asrhub transcribe`` and the file
protocols call) and streaming (``open_stream`` → ``accept`` in 64 ms chunks → ``finish``, the
path a live session takes, without sockets; the finals are joined). WER is scored with
``asrhub.testing.wer`` (English, digits spelt out), CER with ``cer_chinese`` after converting
every hypothesis to simplified characters (the bare engine often writes traditional); aggregates are
corpus-level (errors summed over clips / reference words or characters summed).

Which transcripts are trustworthy comes from NOTES.tsv: a note saying MODEL OUTPUT, LOW
CONFIDENCE, UNRELIABLE, "looks corrupted", "NOT documented" or that the word label is wrong
excludes the clip. With ``--all`` the clips whose reference is another recogniser's output are
scored too, in a second, clearly labelled table (agreement, not accuracy).

    .venv/bin/python bench/accuracy.py --model base --out bench/results/accuracy.md
    .venv/bin/python bench/accuracy.py --model tiny.en --append --out bench/results/accuracy.md
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import opencc

from asrhub.audio import decode_file
from asrhub.testing import cer_chinese, manifest, testdata_dir, wer

RATE = 16000
CHUNK = 1024  # 64 ms, like the seed's pyaudio clients
UNTRUSTED = ("MODEL OUTPUT", "LOW CONFIDENCE", "UNRELIABLE", "looks corrupted", "NOT documented",
             "repo word label says")
_SIMPLIFIED = opencc.OpenCC("t2s")
SYSTEMS = ("bare", "full:offline", "full:stream", "default:offline", "default:stream")


@dataclass
class Clip:
    name: str
    language: str  # "en" or "zh"
    reference: str
    trusted: bool
    audio: np.ndarray = field(repr=False)

    @property
    def units(self) -> int:
        """Reference words (English) or characters (Chinese)."""
        from asrhub.testing import normalize_english

        if self.language == "en":
            return len(normalize_english(self.reference).split())
        return sum(1 for ch in self.reference if "\u4e00" <= ch <= "\u9fff")

    def error_rate(self, hypothesis: str) -> float:
        if self.language == "en":
            return wer(self.reference, hypothesis)
        # Scored in simplified characters (testdata/README.md): the bare engine writes many
        # clips in traditional ones, which is a script choice, not a recognition error.
        return cer_chinese(self.reference, _SIMPLIFIED.convert(hypothesis))


def load_clips(languages: tuple[str, ...], untrusted: bool = False) -> list[Clip]:
    rows = manifest()
    with open(testdata_dir() / "NOTES.tsv", newline="") as fh:
        notes = {row["file"]: row["notes"] for row in csv.DictReader(fh, delimiter="\t")}
    clips = []
    for name, row in rows.items():
        if row["lang"] not in languages or not row["transcript"].strip():
            continue
        trusted = not any(marker in notes.get(name, "") for marker in UNTRUSTED)
        if not trusted and not untrusted:
            continue
        clips.append(Clip(name, row["lang"], row["transcript"], trusted,
                          decode_file(testdata_dir() / name)))
    return clips


def stream_text(engine, audio: np.ndarray, language: str) -> str:
    stream = engine.open_stream(language=language)
    finals = []
    for begin in range(0, len(audio), CHUNK):
        finals += [h.text for h in stream.accept(audio[begin:begin + CHUNK]) if h.is_final]
    finals += [h.text for h in stream.finish() if h.is_final]
    from asrhub.text import join_texts

    return join_texts(finals)


def run(args: argparse.Namespace) -> str:
    from faster_whisper import WhisperModel

    from asrhub_plugins.whisper.engine import WhisperEngine
    from asrhub_plugins.whisper.settings import WhisperSettings

    languages = ("en",) if args.model.endswith(".en") else ("en", "zh")
    clips = load_clips(languages, args.all)
    if args.limit:
        clips = clips[:args.limit]
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    default = WhisperEngine(WhisperSettings(model=args.model), state_dir=state)
    full = WhisperEngine(WhisperSettings(model=args.model, adaptive_window=False), state_dir=state)
    bare = WhisperModel(str(default.model_path), device="cpu", compute_type="int8",
                        cpu_threads=2, local_files_only=True)

    def bare_text(clip: Clip) -> str:
        segments, _ = bare.transcribe(clip.audio, language=clip.language, beam_size=1)
        return " ".join(s.text.strip() for s in segments).strip()

    runners = {
        "bare": bare_text,
        "full:offline": lambda c: full.transcribe(c.audio, language=c.language).text,
        "full:stream": lambda c: stream_text(full, c.audio, c.language),
        "default:offline": lambda c: default.transcribe(c.audio, language=c.language).text,
        "default:stream": lambda c: stream_text(default, c.audio, c.language),
    }
    texts: dict[tuple[str, str], str] = {}
    seconds = dict.fromkeys(SYSTEMS, 0.0)
    for clip in clips:
        for system in SYSTEMS:
            started = time.perf_counter()
            texts[clip.name, system] = runners[system](clip)
            seconds[system] += time.perf_counter() - started
        print(f"{clip.name}: " + " | ".join(
            f"{s} {clip.error_rate(texts[clip.name, s]):.2f}" for s in SYSTEMS), file=sys.stderr)
    audio_s = sum(len(c.audio) for c in clips) / RATE
    return report(args, clips, texts, seconds, audio_s)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def report(args, clips: list[Clip], texts, seconds, audio_s: float) -> str:
    lines = [f"## Whisper {args.model} (beam 1, int8, 2 threads, language given)", ""]
    lines.append(f"`{' '.join(sys.argv)}` — {time.strftime('%Y-%m-%d %H:%M')}, "
                 f"`uptime`: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                 f"{os.getloadavg()[2]:.2f} (2 shared cores; times are noisy, error rates are not)")
    lines.append("")
    head = "| clip | ref units | " + " | ".join(SYSTEMS) + " |"
    rule = "|---|---:|" + "---:|" * len(SYSTEMS)
    for trusted in (True, False):
        chosen = [c for c in clips if c.trusted == trusted]
        if not chosen:
            continue
        title = ("Trustworthy references (NOTES.tsv): WER % (en) / CER % (zh)" if trusted else
                 "References that are another recogniser's output (agreement, not accuracy)")
        lines += [f"### {title}", "", head, rule]
        for clip in chosen:
            cells = [_pct(clip.error_rate(texts[clip.name, s])) for s in SYSTEMS]
            lines.append(f"| {clip.name} | {clip.units} | " + " | ".join(cells) + " |")
        for language, metric in (("en", "WER"), ("zh", "CER")):
            group = [c for c in chosen if c.language == language]
            if not group:
                continue
            total = sum(c.units for c in group)
            cells = [_pct(sum(c.error_rate(texts[c.name, s]) * c.units for c in group) / total)
                     for s in SYSTEMS]
            lines.append(f"| **{metric} {language}, {len(group)} clips** | {total} | "
                         + " | ".join(f"**{x}**" for x in cells) + " |")
        lines.append("")
    lines.append("Compute seconds per system over all clips "
                 f"({audio_s:.0f} s of audio; RTF in brackets): " + ", ".join(
                     f"{s} {seconds[s]:.1f} s ({seconds[s] / audio_s:.3f})" for s in SYSTEMS))
    lines.append("")
    differing = [c for c in clips if len({texts[c.name, s] for s in SYSTEMS}) > 1]
    if differing:
        lines += ["<details><summary>Texts where the systems differ</summary>", ""]
        for clip in differing:
            lines.append(f"- `{clip.name}` ref: {clip.reference}")
            for system in SYSTEMS:
                lines.append(f"  - {system}: {texts[clip.name, system]}")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--state-dir", default=str(Path(__file__).parent / "_work" / "state"))
    parser.add_argument("--limit", type=int, default=0, help="first N clips only (development)")
    parser.add_argument("--all", action="store_true",
                        help="also clips whose reference is another recogniser's output")
    parser.add_argument("--out", default="")
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    text = run(args)
    print(text)
    if args.out:
        out = Path(args.out)
        header = "# Accuracy: bare engine vs asrhub (full window, default), offline and streaming\n\n"
        if args.append and out.exists():
            out.write_text(out.read_text() + "\n" + text + "\n")
        else:
            out.write_text(header + text + "\n")
    subprocess.run(["uptime"], check=False)


if __name__ == "__main__":
    main()
