"""Language codes and Chinese script: small text helpers for the Whisper engine."""

from __future__ import annotations

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
