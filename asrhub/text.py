"""Text helpers shared by every protocol."""

from __future__ import annotations

import unicodedata


def is_wide(char: str) -> bool:
    """CJK ideographs, kana, hangul, full-width forms and CJK punctuation."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def join_texts(parts: list[str]) -> str:
    """Utterance or segment texts → one text: a space between words, none next to CJK text
    (Chinese and Japanese are written without spaces, also where they meet Latin words)."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and not (is_wide(out[-1]) or is_wide(part[0])):
            out += " "
        out += part
    return out
