"""Transcript output formats for the CLI and protocols: text, json, srt, vtt."""

from __future__ import annotations

import json

from asrhub.engine import Transcript


def _clock(seconds: float, sep: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def to_srt(transcript: Transcript, *, speaker_tags: bool = False) -> str:
    blocks = []
    for index, seg in enumerate(transcript.segments, 1):
        text = seg.text.strip()
        if speaker_tags and seg.speaker is not None:
            text = f"<{seg.speaker}>{text}"
        blocks.append(f"{index}\n{_clock(seg.start, ',')} --> {_clock(seg.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n"
            for s in transcript.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


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
