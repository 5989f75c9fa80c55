"""Language codes, Chinese script and repeated sentences: small text helpers for the Whisper engine."""

from __future__ import annotations

import re
import threading

from asrhub.engine import EngineError

# Codes clients send that Whisper spells differently.
_ALIASES = {"cmn": "zh", "zho": "zh", "chi": "zh", "eng": "en", "iw": "he"}


def normalise_language(language: str | None, supported: list[str]) -> str | None:
    """``None``/"auto"/"" → None (detect); "en-US" → "en"; unknown codes raise EngineError."""
    if language is None:
        return None
    code = language.strip().replace("_", "-").split("-")[0].lower()
    if code in ("", "auto"):
        return None
    code = _ALIASES.get(code, code)
    if code not in supported:
        if supported == ["en"]:
            raise EngineError(f"this Whisper model only recognises English, not {language!r}; "
                              "use the multilingual model (model = \"base\") for other languages")
        raise EngineError(f"Whisper does not know the language {language!r}")
    return code


class ChineseScript:
    """Converts Mandarin output to the configured script with OpenCC (thread-safe)."""

    def __init__(self, script: str) -> None:
        self.script = script
        self._converter = None
        self._lock = threading.Lock()
        if script != "as-is":
            import opencc

            self._converter = opencc.OpenCC("t2s" if script == "simplified" else "s2t")

    def apply(self, text: str, language: str | None) -> str:
        if self._converter is None or language != "zh" or not text:
            return text
        with self._lock:
            return self._converter.convert(text)


# ---------------------------------------------------------------------- repeated sentences

# A clause ends at sentence or clause punctuation (Latin and CJK); the punctuation stays with it.
_CLAUSE = re.compile(r"[^.!?;,。！？；，]+[.!?;,。！？；，]*")
_WORD = re.compile(r"\w+")
MIN_REPEAT_WORDS = 3  # a shorter repeat ("no, no", "5 5") is often really said
MIN_REPEAT_CHARS = 4  # the same for CJK text, counted in characters


def _key(clauses: list[str]) -> tuple[str, ...]:
    return tuple(w.lower() for clause in clauses for w in _WORD.findall(clause))


def _long_enough(key: tuple[str, ...]) -> bool:
    if len(key) >= MIN_REPEAT_WORDS:
        return True
    return sum(len(w) for w in key) >= MIN_REPEAT_CHARS and all(
        any("\u4e00" <= ch <= "\u9fff" for ch in w) for w in key)


def _find_repeat(clauses: list[str]) -> tuple[int, int] | None:
    """The first (start, length) such that clauses[start:start+length] comes again at once."""
    for length in range(1, len(clauses) // 2 + 1):
        for start in range(len(clauses) - 2 * length + 1):
            first = _key(clauses[start:start + length])
            if first and first == _key(clauses[start + length:start + 2 * length]) \
                    and _long_enough(first):
                return start, length
    return None


def has_repeated_sentence(text: str) -> bool:
    """Whether a sentence or clause (of at least 3 words, or 4 CJK characters) comes twice in a
    row: "Please call Stella. Please call Stella." The way Whisper repeats itself when the
    audio runs out before its window does; :func:`_repeats_itself` in the engine only sees
    short token loops."""
    return _find_repeat(_CLAUSE.findall(text)) is not None


def collapse_repeated_sentences(text: str) -> str:
    """``text`` with each run of a repeated sentence or clause (see
    :func:`has_repeated_sentence`) kept once, ending with the last copy's punctuation:
    "Please call Stella. Please call Stella." → "Please call Stella."; text without such a
    repeat comes back unchanged (spacing included)."""
    clauses = _CLAUSE.findall(text)
    found = _find_repeat(clauses)
    if found is None:
        return text
    while found is not None:
        start, length = found
        kept, dropped = clauses[start:start + length], clauses[start + length:start + 2 * length]
        tail = re.search(r"[.!?;,。！？；，]*\s*$", dropped[-1])
        ending = tail.group() if tail else ""
        last = re.sub(r"[.!?;,。！？；，]*\s*$", "", kept[-1]) + ending
        clauses = clauses[:start] + kept[:-1] + [last] + clauses[start + 2 * length:]
        found = _find_repeat(clauses)
    return "".join(clauses).strip()
