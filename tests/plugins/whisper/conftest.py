"""Fixtures for the Whisper engine tests: real models (loaded once per session), real audio."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from asrhub.engine import SAMPLE_RATE
from asrhub_plugins.whisper.engine import WhisperEngine
from asrhub_plugins.whisper.settings import WhisperSettings

_NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
            "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten"}


def read16k(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def words(text: str) -> list[str]:
    """Lower-case, no punctuation, hyphens split, small numbers as words, Mr. = mister."""
    text = text.lower().replace("mr.", "mister").replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    return [_NUMBERS.get(w, w) for w in text.split()]


def edit_distance(ref: list, hyp: list) -> int:
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, row[0] = row[:], i
        for j in range(1, len(hyp) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return row[len(hyp)]


def wer(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)) / max(1, len(ref))


def cer(reference: str, hypothesis: str) -> float:
    strip = re.compile(r"[\s\W]", re.UNICODE)
    ref, hyp = list(strip.sub("", reference)), list(strip.sub("", hypothesis))
    return edit_distance(ref, hyp) / max(1, len(ref))


@pytest.fixture(scope="session")
def transcripts(testdata: Path) -> dict[str, str]:
    with (testdata / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        return {row["file"]: row["transcript"] for row in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="session")
def clip(testdata: Path):
    cache: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = read16k(testdata / name)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> WhisperEngine:
    engine = WhisperEngine(WhisperSettings(model="tiny.en"),
                           state_dir=tmp_path_factory.mktemp("tiny-state"))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("base-state")


@pytest.fixture(scope="session")
def base(base_dir: Path) -> WhisperEngine:
    """The default model (multilingual base), assembled into a fresh state dir."""
    engine = WhisperEngine(WhisperSettings(), state_dir=base_dir)
    yield engine
    engine.close()
