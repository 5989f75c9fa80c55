"""Recompute a speaker engine's cosine threshold at the equal-error rate (EER).

    python -m asrhub_plugins.speakers.calibrate [--engine resemblyzer] [--testdata DIR]

Trials: every pair of clips in ``testdata/MANIFEST.tsv`` that carry a speaker label (same label:
target trial, different: non-target), and separately the pairs listed in SPEAKER_PAIRS.tsv.
``speechbrain_example1/2`` are left out: their labels (spk01/spk02) come from another
annotation than spk1/spk2 and may or may not be the same people.

"hard" trials keep only non-target pairs from the same corpus (same language, same recording
set-up), where a threshold actually has to separate voices rather than microphones.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrhub.engine import SpeakerEngine, cosine

EXCLUDED = {"en/speechbrain_example1.wav", "en/speechbrain_example2.flac"}


@dataclass(frozen=True)
class Trial:
    a: str
    b: str
    same: bool
    score: float
    same_corpus: bool


@dataclass(frozen=True)
class EER:
    eer: float  # the larger of the two error rates at the best threshold
    threshold: float  # middle of the interval of thresholds that achieve it
    interval: tuple[float, float]
    targets: int
    nontargets: int
    far: float
    frr: float


def corpus(label: str) -> str:
    if label.startswith("srdata_"):
        return "srdata"
    if label in ("spk1", "spk2"):
        return "speechbrain"
    return label


def labelled_clips(testdata: Path) -> dict[str, str]:
    with open(testdata / "MANIFEST.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {row["file"]: row["speaker_label"] for row in rows
            if row.get("speaker_label") and row["file"] not in EXCLUDED}


def listed_pairs(testdata: Path) -> list[tuple[str, str, bool]]:
    if not (testdata / "SPEAKER_PAIRS.tsv").is_file():
        return []
    with open(testdata / "SPEAKER_PAIRS.tsv", encoding="utf-8") as fh:
        return [(row["file_a"], row["file_b"], row["label"] == "same")
                for row in csv.DictReader(fh, delimiter="\t")]


def embed_files(engine: SpeakerEngine, testdata: Path, files: list[str]) -> dict[str, np.ndarray]:
    from asrhub.audio import decode_file

    return {f: engine.embed(decode_file(testdata / f)) for f in files}


def all_trials(labels: dict[str, str], embeddings: dict[str, np.ndarray]) -> list[Trial]:
    trials = []
    for a, b in itertools.combinations(sorted(labels), 2):
        trials.append(Trial(a, b, labels[a] == labels[b], cosine(embeddings[a], embeddings[b]),
                            corpus(labels[a]) == corpus(labels[b])))
    return trials


def equal_error_rate(same: list[float], different: list[float]) -> EER:
    targets = np.sort(np.asarray(same, dtype=np.float64))
    nontargets = np.sort(np.asarray(different, dtype=np.float64))
    scores = np.unique(np.concatenate([targets, nontargets]))
    # a trial is accepted when score >= threshold; candidates sit between observed scores
    candidates = np.concatenate([[scores[0] - 1e-3], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-3]])
    frr = np.searchsorted(targets, candidates, side="left") / len(targets)
    far = 1 - np.searchsorted(nontargets, candidates, side="left") / len(nontargets)
    worst = np.maximum(frr, far)
    best = worst.min()
    at = np.flatnonzero(np.isclose(worst, best))
    # widen to the scores bounding the best candidates: any threshold in there is as good
    lo_i, hi_i = at.min(), at.max()
    lo = scores[lo_i - 1] if lo_i > 0 else candidates[lo_i]
    hi = scores[hi_i] if hi_i < len(scores) else candidates[hi_i]
    middle = int(at[len(at) // 2])
    return EER(float(best), float((lo + hi) / 2), (float(lo), float(hi)), len(targets),
               len(nontargets), float(far[middle]), float(frr[middle]))


@dataclass(frozen=True)
class FittedEER:
    eer: float
    threshold: float


def gaussian_eer(same: list[float], different: list[float]) -> FittedEER:
    """EER of two normal distributions fitted to the scores: a smoother estimate than the
    empirical one when there are few trials (the threshold where both tails are equal)."""
    from math import erfc, sqrt

    ms, ss = float(np.mean(same)), float(np.std(same, ddof=1))
    md, sd = float(np.mean(different)), float(np.std(different, ddof=1))
    threshold = (md * ss + ms * sd) / (ss + sd)  # (t - md) / sd == (ms - t) / ss
    z = (threshold - md) / sd
    return FittedEER(0.5 * erfc(z / sqrt(2)), threshold)


def report(engine: SpeakerEngine, testdata: Path, out=sys.stdout) -> dict[str, EER]:
    labels = labelled_clips(testdata)
    pairs = listed_pairs(testdata)
    files = sorted(set(labels) | {f for a, b, _ in pairs for f in (a, b)})
    embeddings = embed_files(engine, testdata, files)
    trials = all_trials(labels, embeddings)
    results = {
        "all pairs": equal_error_rate([t.score for t in trials if t.same],
                                      [t.score for t in trials if not t.same]),
        "hard (same-corpus non-targets)": equal_error_rate(
            [t.score for t in trials if t.same], [t.score for t in trials if not t.same and t.same_corpus]),
    }
    listed = [(a, b, same, cosine(embeddings[a], embeddings[b])) for a, b, same in pairs]
    if any(same for *_, same, _ in listed) and not all(same for *_, same, _ in listed):
        results["SPEAKER_PAIRS.tsv"] = equal_error_rate([s for *_, same, s in listed if same],
                                                        [s for *_, same, s in listed if not same])
    print(f"engine {engine.name}: {len(labels)} labelled clips, {len(set(labels.values()))} speakers",
          file=out)
    print("| trials | targets | non-targets | EER | threshold at EER | equal-error interval |", file=out)
    print("|---|---|---|---|---|---|", file=out)
    for name, r in results.items():
        print(f"| {name} | {r.targets} | {r.nontargets} | {r.eer:.1%} | {r.threshold:.3f} | "
              f"{r.interval[0]:.3f} – {r.interval[1]:.3f} |", file=out)
    same_scores = [t.score for t in trials if t.same]
    diff_hard = [t.score for t in trials if not t.same and t.same_corpus]
    diff_cross = [t.score for t in trials if not t.same and not t.same_corpus]
    for name, values in (("same speaker", same_scores), ("different, same corpus", diff_hard),
                         ("different, other corpus", diff_cross)):
        v = np.asarray(values)
        print(f"{name:<24} n={len(v):<4} min {v.min():.3f}  mean {v.mean():.3f}  max {v.max():.3f}",
              file=out)
    fitted = gaussian_eer(same_scores, diff_hard)
    print(f"\nGaussian fit (same vs same-corpus different): EER {fitted.eer:.1%} at {fitted.threshold:.3f}",
          file=out)
    print("closest to the boundary:", file=out)
    for t in sorted(trials, key=lambda t: t.score)[::-1]:
        if (not t.same and t.score > results["all pairs"].threshold - 0.05) or (
                t.same and t.score < results["all pairs"].threshold + 0.05):
            print(f"  {'same' if t.same else 'diff'}  {t.score:.3f}  {t.a}  {t.b}", file=out)
    if listed:
        print("\nSPEAKER_PAIRS.tsv:", file=out)
    for a, b, same, s in listed:
        print(f"  {'same' if same else 'diff'}  {s:.3f}  {a}  {b}", file=out)
    return results


def main(argv: list[str] | None = None) -> int:
    from asrhub.testing import make_hub, testdata_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="resemblyzer")
    parser.add_argument("--testdata", type=Path, default=None)
    args = parser.parse_args(argv)
    hub = make_hub({"engines": {"speaker": args.engine}}, only=[])
    engine = hub.engine_sync("speaker")
    report(engine, args.testdata or testdata_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
