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


def encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode that UTF-8 can hold: JSON lets a client send a lone
    surrogate (``"\\ud800"``), which a tokenizer, a database or a socket then refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
