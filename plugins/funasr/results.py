"""FunASR result dicts → asrhub text, segments and words.

What FunASR returns, per model and pipeline:
- Paraformer: ``text`` with a space between tokens ("欢 迎 hello"), and with
  ``output_timestamp`` a ``timestamp`` list of ``[start_ms, end_ms]``, one per token.
- With ``vad_model`` + ``punc_model`` and ``sentence_timestamp`` (or ``spk_model``):
  ``sentence_info``, a list of ``{text, start, end, timestamp[, spk]}`` (ms).
- SenseVoice: rich tags in the text ("<|zh|><|NEUTRAL|><|Speech|><|withitn|>...").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from asrhub.engine import Segment, Transcript, Word

_TAG = re.compile(r"<\|([^|]*)\|>")
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
# FunASR's punctuated output puts no space between CJK and Latin text ("is on他一定在家").
_SPACE_BESIDE_CJK = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")
_IS_CJK = re.compile(rf"[{_CJK}]")
SENSEVOICE_LANGUAGES = {"zh", "en", "yue", "ja", "ko"}
# A pause this long between two tokens starts a new segment (when FunASR gives no sentences).
SEGMENT_GAP_MS = 500


def clean_text(text: str) -> str:
    """No rich tags, no spaces beside CJK characters, single spaces elsewhere."""
    text = _TAG.sub("", text or "")
    text = " ".join(text.split())
    return _SPACE_BESIDE_CJK.sub("", text)


def language_tag(text: str) -> str | None:
    """The language SenseVoice tagged its text with, if any."""
    for tag in _TAG.findall(text or ""):
        if tag in SENSEVOICE_LANGUAGES:
            return tag
    return None


def join_text(left: str, right: str) -> str:
    """Concatenate two pieces of recognised text (a space only between non-CJK words)."""
    if not left or not right:
        return left or right
    if _IS_CJK.match(left[-1]) or _IS_CJK.match(right[0]):
        return left + right
    return f"{left} {right}"


def tokens(text: str) -> list[str]:
    """The units FunASR gives one timestamp each: CJK characters and other words, without
    punctuation."""
    out: list[str] = []
    for piece in _TAG.sub("", text or "").split():
        word = ""
        for char in piece:
            if unicodedata.category(char).startswith("P"):
                continue
            if _IS_CJK.match(char):
                if word:
                    out.append(word)
                    word = ""
                out.append(char)
            else:
                word += char
        if word:
            out.append(word)
    return out


def _words(text: str, timestamps: Sequence[Sequence[float]] | None) -> list[Word]:
    units = tokens(text)
    if not timestamps or len(units) != len(timestamps):
        return []
    return [Word(start=t[0] / 1000, end=t[1] / 1000, word=u) for u, t in zip(units, timestamps, strict=True)]


def _speaker(spk: Any) -> str | None:
    return None if spk is None else f"speaker_{spk}"


def _join_units(units: Sequence[str]) -> str:
    text = ""
    for unit in units:
        text = join_text(text, unit)
    return text


def _segments_from_timestamps(text: str, timestamps: Sequence[Sequence[float]],
                              word_timestamps: bool) -> list[Segment]:
    units = tokens(text)
    punctuated = any(unicodedata.category(c).startswith("P") for c in _TAG.sub("", text))
    if len(units) != len(timestamps) or punctuated:
        # Punctuation (punc_model without vad_model) would be lost by splitting at pauses.
        words = _words(text, timestamps) if word_timestamps else []
        return [Segment(timestamps[0][0] / 1000, timestamps[-1][1] / 1000, clean_text(text), words)]
    segments: list[Segment] = []
    first = 0
    for i in range(1, len(units) + 1):
        if i < len(units) and timestamps[i][0] - timestamps[i - 1][1] < SEGMENT_GAP_MS:
            continue
        words = [Word(timestamps[k][0] / 1000, timestamps[k][1] / 1000, units[k])
                 for k in range(first, i)] if word_timestamps else []
        segments.append(Segment(timestamps[first][0] / 1000, timestamps[i - 1][1] / 1000,
                                _join_units(units[first:i]), words))
        first = i
    return segments


def to_transcript(result: list[dict[str, Any]], *, duration: float, language: str | None,
                  word_timestamps: bool) -> Transcript:
    if not result:
        return Transcript(text="", language=language, duration=duration)
    item = result[0]
    raw = str(item.get("text") or "")
    language = language or language_tag(raw)
    text = clean_text(raw)
    segments: list[Segment] = []
    sentences = item.get("sentence_info") or []
    timestamps = item.get("timestamp") or []
    if sentences:
        for sentence in sentences:
            sentence_text = clean_text(str(sentence.get("text") or sentence.get("sentence") or ""))
            if not sentence_text:
                continue
            words = _words(str(sentence.get("raw_text") or sentence_text),
                           sentence.get("timestamp")) if word_timestamps else []
            segments.append(Segment(float(sentence["start"]) / 1000, float(sentence["end"]) / 1000,
                                    sentence_text, words, speaker=_speaker(sentence.get("spk"))))
    elif timestamps and text:
        segments = _segments_from_timestamps(raw, timestamps, word_timestamps)
    elif text:
        segments = [Segment(0.0, duration, text)]
    return Transcript(text=text, language=language, duration=duration, segments=segments)
