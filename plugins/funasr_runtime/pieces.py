"""Text as FunASR's clients expect it: pieces that are concatenated, never replaced.

FunASR's streaming Paraformer emits, per chunk, only the tokens that chunk added, and its
clients append every ``online`` / ``2pass-online`` text to what they show (``2pass-offline``
replaces the online pieces of its sentence). The hub's engines instead give, for the utterance
in progress, a whole new hypothesis each time, which may revise words (Whisper decodes the
utterance again). :class:`Increments` turns those hypotheses into append-only pieces:

- while an utterance goes on, it sends the words that two successive hypotheses agree on
  (and that were not sent yet): a word is shown once it looks stable;
- at the utterance's end it sends what the final text has beyond what was sent, aligned by a
  word-level diff, so a revision that came too late costs at most the words it changed.

:class:`Joiner` adds the space a concatenating client needs between Latin words (none next to
CJK text), so the client's concatenation reads like :func:`asrhub.text.join_texts`.
"""

from __future__ import annotations

import difflib
import re

from asrhub.text import is_wide, join_texts

_UNIT = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
                   r"\uf900-\ufaff\uff00-\uffef]|[^\s\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf"
                   r"\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]+")


def units(text: str) -> list[str]:
    """Words, and CJK characters one by one (the units FunASR emits)."""
    return _UNIT.findall(text or "")


def _key(unit: str) -> str:
    """Units compare without case and trailing punctuation ("man" agrees with "Man.")."""
    return unit.lower().rstrip(".,!?;:\"'，。？！、")


class Joiner:
    """The text a client has concatenated so far on one track, by its last character."""

    def __init__(self) -> None:
        self.last = ""

    def piece(self, text: str) -> str:
        """``text`` as the next piece: with a leading space where two Latin words meet."""
        text = text.strip()
        if not text:
            return ""
        if self.last and not (is_wide(self.last) or is_wide(text[0])):
            text = " " + text
        self.last = text[-1]
        return text

    def follow(self, other: Joiner) -> None:
        self.last = other.last


class Increments:
    """Append-only pieces of one utterance at a time (see the module's docstring)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._previous: list[str] = []

    def partial(self, text: str) -> str:
        """New stable words of the utterance in progress ("" if none)."""
        current = units(text)
        agreed = 0
        for a, b in zip(self._previous, current, strict=False):
            if _key(a) != _key(b):
                break
            agreed += 1
        self._previous = current
        if agreed <= len(self.sent) or [_key(u) for u in current[:len(self.sent)]] != [
                _key(u) for u in self.sent]:
            return ""
        new = current[len(self.sent):agreed]
        self.sent += new
        return join_texts(new)

    def final(self, text: str) -> str:
        """What the utterance's final text adds to what was sent; the utterance is over."""
        final = units(text)
        rest = final
        if self.sent:
            matcher = difflib.SequenceMatcher(a=[_key(u) for u in self.sent],
                                              b=[_key(u) for u in final], autojunk=False)
            blocks = [b for b in matcher.get_matching_blocks() if b.size]
            if blocks:
                # Sent units after the last agreement stand for as many final units (a
                # revision is mostly a substitution).
                last = blocks[-1]
                position = last.b + last.size + len(self.sent) - (last.a + last.size)
            else:
                position = len(self.sent)
            rest = final[position:]
        self.sent, self._previous = [], []
        return join_texts(rest)
