"""One language rule for every live session: names clients use, and when a detected language
is pinned.

- :func:`parse_language` turns what a client or a config writes (a code such as ``"en"``, or a
  seed's name such as ``"中文"`` / ``"english"``, or ``"auto"``) into a language code or
  ``"auto"``; anything else is a :class:`ValueError`.
- :class:`LanguagePin`: a session's recognition language. Given, it never changes. Otherwise
  the engine detects it, and the language of the first utterance of at least
  :data:`PIN_AFTER_S` seconds that produced text is kept for the rest of the session: detection
  costs an encoder pass per utterance, and a short first word is not enough to tell.

Engines that pin inside their own streams (Whisper's ``ASRStream``) use the same constant.
"""

from __future__ import annotations

PIN_AFTER_S = 2.0  # seconds of audio in one utterance before its detected language is kept

# Names the seeds use (vad_stream's ``"中文"``) and plain English names, to codes.
LANGUAGE_NAMES = {
    "中文": "zh", "普通话": "zh", "汉语": "zh", "chinese": "zh", "mandarin": "zh",
    "英文": "en", "英语": "en", "english": "en",
    "粤语": "yue", "cantonese": "yue",
    "日文": "ja", "日语": "ja", "japanese": "ja",
    "韩文": "ko", "韩语": "ko", "korean": "ko",
    "自动": "auto", "auto": "auto",
}


def parse_language(value: str) -> str:
    """A language code (2-3 ASCII letters), a known name or ``"auto"`` → a code or ``"auto"``.
    Raises :class:`ValueError` (with a message fit for a client) for anything else."""
    key = value.strip().lower()
    if key in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[key]
    if 2 <= len(key) <= 3 and key.isascii() and key.isalpha():
        return key
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise ValueError(f"unsupported language: {shown!r}")  # repr escapes lone surrogates


def language_code(value: str | None) -> str | None:
    """What an engine's ``language=`` takes: a code, or None for detection ("" and "auto")."""
    if not value:
        return None
    code = parse_language(value)
    return None if code == "auto" else code


class LanguagePin:
    """The recognition language of one live session (see the module docstring)."""

    def __init__(self, configured: str | None, pin_after_s: float = PIN_AFTER_S) -> None:
        self.configured = language_code(configured)
        self.pin_after_s = pin_after_s
        self.language: str | None = self.configured

    @property
    def detecting(self) -> bool:
        return self.language is None

    def observe(self, detected: str | None, duration_s: float, text: str) -> None:
        """After an utterance was recognised with language detection: keep ``detected`` if the
        utterance was long enough and said something."""
        if self.language is None and detected and text.strip() and duration_s >= self.pin_after_s:
            self.language = detected

    def reset(self) -> None:
        """Back to the configured language (detection again, if none was configured)."""
        self.language = self.configured
