"""The seed's quality filters: which segments are worth recognising, which texts worth sending."""

from __future__ import annotations

import re

import numpy as np

from asrhub.engine import SAMPLE_RATE, Audio
from asrhub.segmenter import SpeechEnded

from .settings import VadStreamSettings

# CJK ideographs (basic, extension A, compatibility) and Latin letters (ASCII, Latin-1,
# Latin Extended-A/B, full-width). Digits and punctuation alone do not make a result.
_MEANINGFUL = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\uff21-\uff3a\uff41-\uff5a]")


def rms(audio: Audio) -> float:
    if not len(audio):
        return 0.0
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def segment_rejection(segment: SpeechEnded, settings: VadStreamSettings) -> str | None:
    """Why a segment is not sent to ASR (energy, speech ratio, minimum duration), or None."""
    energy = rms(segment.audio)
    if energy < settings.energy_threshold:
        return f"energy {energy:.4f} < {settings.energy_threshold}"
    if segment.speech_ratio < settings.speech_ratio_threshold:
        return f"speech ratio {segment.speech_ratio:.2f} < {settings.speech_ratio_threshold}"
    duration = segment.samples / SAMPLE_RATE
    if duration < settings.min_segment_s:
        return f"duration {duration:.2f} s < {settings.min_segment_s} s"
    return None


def text_rejection(text: str, settings: VadStreamSettings) -> str | None:
    """Why a recognised text is not sent (too short, no CJK or Latin letter), or None."""
    stripped = text.strip()
    if len(stripped) < max(settings.min_text_length, 1):
        return f"text shorter than {settings.min_text_length} characters"
    if not _MEANINGFUL.search(stripped):
        return "text has no CJK character or Latin letter"
    return None
