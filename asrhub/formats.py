"""Transcript output formats for the CLI and protocols: text, json, srt, vtt.

Subtitles follow the usual reading conventions (Netflix / BBC style guides): a cue shows at
most two lines of about 42 characters for at most about 7 seconds, a new speaker starts a new
cue, a sentence that ends closes its cue, and a long pause starts a new one. Cues are cut at
word timestamps (ask the engine for ``word_timestamps=True``); a segment without words is
split at its spaces (between characters for CJK) with times spread by length. CJK characters
count as two columns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from asrhub.engine import Transcript
from asrhub.text import is_wide

MAX_CUE_S = 7.0
MAX_LINE_WIDTH = 42
MAX_LINES = 2
PAUSE_S = 1.2            # silence between words that ends a cue
MIN_CUE_S = 0.8          # a short cue is held longer when the next one leaves room
MAX_WORD_S = 3.0         # longer "words" are Whisper stretching one across a pause
SENTENCE_MIN_S = 1.0     # a sentence end closes a cue once the cue has this much on screen...
SENTENCE_MIN_WIDTH = 18  # ...or this many columns
SENTENCE_END = tuple(".?!…。？！")
CLAUSE_END = tuple(",;:，、；：—")
_TOKEN = re.compile(r"[^\s]+")
# A full stop that does not end a sentence.
ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "vs.", "e.g.",
                           "i.e.", "no.", "mt."})


@dataclass
class Token:
    """One word (or CJK character) placed in time."""

    start: float
    end: float
    text: str
    space_before: bool
    speaker: str | None


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]
    speaker: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def width(text: str) -> int:
    return sum(2 if is_wide(ch) else 1 for ch in text)


def _split_text(text: str) -> list[tuple[str, bool]]:
    """Words of a segment without word timestamps: (text, space before). CJK runs split per
    character, punctuation staying with the character before it."""
    out: list[tuple[str, bool]] = []
    for match in _TOKEN.finditer(text):
        word, spaced = match.group(), True
        piece = ""
        for ch in word:
            if is_wide(ch) and not (ch in SENTENCE_END or ch in CLAUSE_END) and piece:
                out.append((piece, spaced))
                piece, spaced = "", False
            elif piece and is_wide(piece[-1]) and not is_wide(ch):
                out.append((piece, spaced))
                piece, spaced = "", False
            piece += ch
        if piece:
            out.append((piece, spaced))
    return out


def tokens_of(transcript: Transcript) -> list[Token]:
    tokens: list[Token] = []
    for seg in transcript.segments:
        if seg.words:
            # Whisper's words carry their leading space; engines whose words carry none
            # (FunASR) are spaced between Latin words by the joining rule.
            spaced_words = any(w.word[:1].isspace() for w in seg.words)
            for w in seg.words:
                text = w.word.strip()
                if text:
                    tokens.append(Token(w.start, w.end, text,
                                        w.word[:1].isspace() or not spaced_words, seg.speaker))
            continue
        parts = _split_text(seg.text)
        total = sum(width(p) for p, _ in parts) or 1
        span = max(0.0, seg.end - seg.start)
        at = seg.start
        for text, spaced in parts:
            step = span * width(text) / total
            tokens.append(Token(at, at + step, text, spaced, seg.speaker))
            at += step
    for tok in tokens:
        tok.end = max(tok.end, tok.start)
        tok.start = max(tok.start, tok.end - MAX_WORD_S)
    return tokens


def _joined(tokens: list[Token]) -> str:
    out = ""
    for i, tok in enumerate(tokens):
        wide_join = out and (is_wide(out[-1]) or is_wide(tok.text[0]))
        if i and tok.space_before and not wide_join:
            out += " "
        out += tok.text
    return out


def _breakable(tokens: list[Token], k: int) -> bool:
    """A line may break before tokens[k]: at a space, or between CJK characters (never before
    punctuation)."""
    if tokens[k].text.startswith(SENTENCE_END + CLAUSE_END):
        return False
    return tokens[k].space_before or is_wide(tokens[k].text[0]) or is_wide(tokens[k - 1].text[-1])


def layout(tokens: list[Token], max_width: int = MAX_LINE_WIDTH) -> list[str] | None:
    """One line, or two balanced lines each within ``max_width`` (preferring a break after
    punctuation); None when the words do not fit in two lines."""
    whole = _joined(tokens)
    if width(whole) <= max_width:
        return [whole]
    best: tuple[float, list[str]] | None = None
    for k in range(1, len(tokens)):
        if not _breakable(tokens, k):
            continue
        first, second = _joined(tokens[:k]), _joined(tokens[k:])
        w1, w2 = width(first), width(second)
        if max(w1, w2) > max_width:
            continue
        # Balanced lines read best; a break after punctuation is worth a few columns.
        score = abs(w1 - w2) - (8 if tokens[k - 1].text.endswith(SENTENCE_END + CLAUSE_END) else 0)
        if best is None or score < best[0]:
            best = (score, [first, second])
    return best[1] if best else None


def _fits(tokens: list[Token], max_s: float, max_width: int) -> bool:
    if len(tokens) == 1:
        return True  # one word always gets a cue, however long
    return tokens[-1].end - tokens[0].start <= max_s and layout(tokens, max_width) is not None


def _carry_tail(cue: list[Token]) -> int | None:
    """Where to cut an overfull cue so that its last phrase moves on with the next word: after
    the last clause punctuation, if what stays is at least a third of the cue or a phrase of
    its own (SENTENCE_MIN_WIDTH columns)."""
    total = width(_joined(cue))
    for k in range(len(cue) - 1, 0, -1):
        if cue[k - 1].text.endswith(CLAUSE_END + SENTENCE_END):
            head = width(_joined(cue[:k]))
            return k if head >= min(total / 3, SENTENCE_MIN_WIDTH) else None
    return None


def cues_of(transcript: Transcript, *, max_s: float = MAX_CUE_S,
            max_width: int = MAX_LINE_WIDTH) -> list[Cue]:
    groups: list[list[Token]] = []
    cue: list[Token] = []
    for tok in tokens_of(transcript):
        if cue and (tok.speaker != cue[-1].speaker or tok.start - cue[-1].end > PAUSE_S):
            groups.append(cue)
            cue = []
        if cue and not _fits([*cue, tok], max_s, max_width):
            cut = _carry_tail(cue)
            if cut is not None and _fits([*cue[cut:], tok], max_s, max_width):
                groups.append(cue[:cut])
                cue = cue[cut:]
            else:
                groups.append(cue)
                cue = []
        cue.append(tok)
        on_screen = cue[-1].end - cue[0].start
        ends_sentence = tok.text.endswith(SENTENCE_END) and tok.text.lower() not in ABBREVIATIONS
        if ends_sentence and (on_screen >= SENTENCE_MIN_S or width(_joined(cue)) >= SENTENCE_MIN_WIDTH):
            groups.append(cue)
            cue = []
    if cue:
        groups.append(cue)

    cues = [Cue(g[0].start, g[-1].end, layout(g, max_width) or [_joined(g)], g[0].speaker)
            for g in groups]
    for cue_, nxt in zip(cues, [*cues[1:], None], strict=True):
        limit = nxt.start if nxt is not None else cue_.start + max_s
        if cue_.end - cue_.start < MIN_CUE_S:  # long enough to read, never over the next cue
            cue_.end = max(cue_.end, min(cue_.start + MIN_CUE_S, limit))
        if nxt is not None and cue_.end > nxt.start >= cue_.start:
            cue_.end = nxt.start
    return cues


def _clock(seconds: float, sep: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def to_srt(transcript: Transcript, *, speaker_tags: bool = False) -> str:
    """SRT; ``speaker_tags`` puts ``<speaker_N>`` before each cue's text (the file
    transcription seed's layout)."""
    blocks = []
    for index, cue in enumerate(cues_of(transcript), 1):
        text = cue.text
        if speaker_tags and cue.speaker is not None:
            text = f"<{cue.speaker}>{text}"
        blocks.append(f"{index}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    """WebVTT; a known speaker is a voice span (``<v speaker_0>``)."""
    blocks = []
    for cue in cues_of(transcript):
        text = f"<v {cue.speaker}>{cue.text}" if cue.speaker is not None else cue.text
        blocks.append(f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n{text}\n")
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(transcript: Transcript, fmt: str) -> str:
    if fmt == "text":
        return transcript.text.strip() + "\n"
    if fmt == "json":
        return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "srt":
        return to_srt(transcript)
    if fmt == "vtt":
        return to_vtt(transcript)
    raise ValueError(f"unknown format {fmt!r}")


def wants_word_timestamps(fmt: str) -> bool:
    """Subtitles are cut at word timestamps; the other formats do not need them."""
    return fmt in ("srt", "vtt")
