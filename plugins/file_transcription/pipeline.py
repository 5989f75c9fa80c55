"""One file job: decode → speech regions → speakers → transcribe piece by piece → result.

- Speech regions come from the hub's VAD (silence is never sent to the ASR engine).
- Diarization (:mod:`asrhub.diarize`): one speaker embedding per region (short regions take their
  nearest neighbour's speaker), agglomerative clustering on cosine distance with a distance
  threshold (the number of speakers is estimated, not given). Without a VAD the ASR segments
  are diarized instead; without a speaker engine the file has one speaker (a logged warning).
- Consecutive regions of one speaker are merged into pieces of at most ``piece_seconds``, each
  transcribed by one executor call, so every segment has one speaker and live sessions of the
  other protocols get the workers between two pieces.

Every blocking step is a short call in the hub's inference executor at ``Priority.BATCH``.
Progress from the engine (a worker thread) hops to the loop with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from asrhub.audio import decode_file
from asrhub.diarize import speaker_labels
from asrhub.engine import SAMPLE_RATE, Audio, Segment, Transcript, Word
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority
from asrhub.formats import to_srt
from asrhub.segmenter import quietest_point
from asrhub.text import join_texts

log = structlog.get_logger("asrhub.file_transcription")

# Where each stage ends in the overall progress (percent); transcription takes the rest.
DECODE_END, VAD_END, DIARIZE_END = 5.0, 8.0, 15.0
VAD_WINDOW_S = 300.0  # speech_regions in 5-minute calls: a long file never holds a worker long

Report = Callable[[float, str], None]  # (overall percent, stage message), called on the loop


@dataclass(frozen=True)
class Piece:
    start: int  # samples
    end: int
    speaker: int | None = None


def plan_pieces(regions: list[tuple[int, int]], total: int, *, max_len: int,
                speakers: list[int] | None = None, pad: int = int(0.2 * SAMPLE_RATE),
                split: Callable[[int, int], int] | None = None) -> list[Piece]:
    """Merge consecutive speech regions (padded) into pieces of at most ``max_len`` samples,
    never across a change of speaker. A region longer than ``max_len`` is cut where
    ``split(lo, hi)`` says (a sample in [lo, hi], the last third of the allowed length), or
    hard at ``max_len``. Silence between pieces is skipped."""
    pieces: list[Piece] = []
    current: list[int] | None = None  # start, end, speaker (-1: unknown)
    order = sorted(range(len(regions)), key=lambda i: regions[i])
    for i in order:
        start, end = regions[i]
        label = speakers[i] if speakers is not None else -1
        start, end = max(0, start - pad), min(total, end + pad)
        if current is not None:
            start = max(start, current[1] if label != current[2] else current[0])
        if end <= start:
            continue
        if current is not None and label == current[2] and end - current[0] <= max_len:
            current[1] = max(current[1], end)
            continue
        if current is not None:
            pieces.append(_piece(current))
        while end - start > max_len:
            cut = start + max_len
            if split is not None:
                cut = min(max(split(start + max_len * 2 // 3, cut), start + 1), cut)
            pieces.append(_piece([start, cut, label]))
            start = cut
        current = [start, end, label]
    if current is not None and current[1] > current[0]:
        pieces.append(_piece(current))
    return pieces


def _piece(values: list[int]) -> Piece:
    return Piece(values[0], values[1], values[2] if values[2] >= 0 else None)


def fixed_pieces(total: int, max_len: int) -> list[Piece]:
    return [Piece(start, min(total, start + max_len)) for start in range(0, total, max_len)]


def speaker_name(index: int) -> str:
    return f"说话人{index + 1}"


def build_result(segments: list[Segment], duration: float, language: str | None) -> dict[str, Any]:
    """The seed's JSON result (without ``format``, added per reply by :func:`render_result`)."""
    speakers: dict[str, list[int]] = {}
    rows = []
    for index, seg in enumerate(segments):
        speaker = seg.speaker or "speaker_0"
        speakers.setdefault(speaker, []).append(index)
        row: dict[str, Any] = {"text": seg.text.strip(), "start": round(seg.start, 3),
                               "end": round(seg.end, 3), "speaker": speaker}
        if seg.words:  # kept for subtitles; replies other than SRT leave them out
            row["words"] = [{"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word}
                            for w in seg.words]
        rows.append(row)
    ordered = sorted(speakers, key=lambda s: int(s.rsplit("_", 1)[-1]))
    return {
        "text": join_texts([seg.text for seg in segments]),
        "segments": rows,
        "speakers": [{"id": sid, "name": speaker_name(int(sid.rsplit("_", 1)[-1])),
                      "segments": speakers[sid]} for sid in ordered],
        "duration": round(duration, 3),
        "language": language,
    }


def render_result(result: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The result as sent for ``output_format``: for "srt", ``text`` holds the SRT document
    (the seed's layout, ``<speaker_N>`` before each cue's text); segments etc. are unchanged."""
    out = dict(result, format=fmt)
    if any("words" in s for s in result.get("segments", ())):  # the seed's row shape on the wire
        out["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in result["segments"]]
    if fmt == "srt":
        transcript = Transcript(
            text=result["text"], language=result.get("language"), duration=result["duration"],
            segments=[Segment(start=s["start"], end=s["end"], text=s["text"], speaker=s["speaker"],
                              # cues are cut at word times when a result row carries them,
                              # else asrhub.formats spreads the segment's time by length
                              words=[Word(w["start"], w["end"], w["word"]) for w in s.get("words", ())])
                      for s in result["segments"]])
        out["text"] = to_srt(transcript, speaker_tags=True)
    return out


class FileTranscriber:
    """Runs one file job against the hub's shared engines."""

    def __init__(self, hub: Any, settings: Any) -> None:
        self.hub = hub
        self.settings = settings
        self._warned: set[str] = set()

    def _warn_once(self, key: str, event: str, **kw: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(event, **kw)

    async def _run(self, fn: Callable[..., Any], *args: Any, engine: str | None,
                   **kwargs: Any) -> Any:
        # A file job waits for room in the executor rather than failing when it is busy.
        # ``engine`` (required: the hub's name of the engine ``fn`` runs on, None for plain
        # work such as decoding) is what per-engine concurrency limits count.
        return await self.hub.executor.run(fn, *args, priority=Priority.BATCH, engine=engine,
                                           timeout=3600, **kwargs)

    async def transcribe(self, path: Path, report: Report, *,
                         words: bool = False) -> tuple[dict[str, Any], float]:
        """Returns (result, audio duration in seconds), with word times in the segment rows when
        ``words``. Raises AudioError for undecodable files."""
        report(0.0, "正在解码音频...")
        started = time.perf_counter()
        audio: Audio = await self._run(decode_file, path, engine=None)
        duration = len(audio) / SAMPLE_RATE
        log.info("file_decoded", audio_s=round(duration, 2), decode_s=round(time.perf_counter() - started, 3))
        report(DECODE_END, "正在检测语音段...")
        max_len = int(self.settings.piece_seconds * SAMPLE_RATE)
        regions = await self._speech_regions(audio)
        if regions is None:
            pieces = fixed_pieces(len(audio), max_len)
        else:
            speakers = None
            if self.settings.diarization and regions:
                report(VAD_END, "正在识别说话人...")
                spans = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in regions]
                speakers = await self._speakers(audio, spans, report, VAD_END, DIARIZE_END)
            pieces = plan_pieces(regions, len(audio), max_len=max_len, speakers=speakers,
                                 split=lambda lo, hi: quietest_point(audio, lo, hi))
        report(DIARIZE_END, "正在转录音频...")
        segments, language = await self._transcribe_pieces(audio, pieces, report, words=words)
        if regions is None and self.settings.diarization and segments:
            # No VAD: speakers of the ASR segments instead of the speech regions.
            labels = await self._speakers(audio, [(s.start, s.end) for s in segments], report, 99.0, 99.0)
            for seg, label in zip(segments, labels or [0] * len(segments), strict=True):
                seg.speaker = f"speaker_{label}"
        return build_result(segments, duration, language), duration

    async def _transcribe_pieces(self, audio: Audio, pieces: list[Piece], report: Report, *,
                                 words: bool = False) -> tuple[list[Segment], str | None]:
        loop = asyncio.get_running_loop()
        engine_name = self.hub.engine_name("asr", self.settings.asr_engine or None)
        engine = await self.hub.asr(self.settings.asr_engine or None)
        language = self.settings.language or None
        speech_total = sum(p.end - p.start for p in pieces) or 1
        done = 0
        segments: list[Segment] = []
        speaker_ids: dict[int, str] = {}
        for piece in pieces:
            span = piece.end - piece.start

            def progress(fraction: float, base: int = done, span: int = span) -> None:
                # Called in the worker thread: hop to the loop.
                share = (base + min(max(fraction, 0.0), 1.0) * span) / speech_total
                loop.call_soon_threadsafe(report, DIARIZE_END + share * (100.0 - DIARIZE_END),
                                          "正在转录音频...")

            transcript: Transcript = await self._run(
                engine.transcribe, audio[piece.start:piece.end], engine=engine_name,
                language=language, word_timestamps=words, progress=progress)
            # Detect the language once (on the first piece with speech), then keep it.
            if language is None and transcript.language and transcript.text.strip():
                language = transcript.language
            offset = piece.start / SAMPLE_RATE
            # Speakers renumbered in order of first speech (a region may hold no words).
            speaker = None
            if piece.speaker is not None and transcript.text.strip():
                speaker = speaker_ids.setdefault(piece.speaker, f"speaker_{len(speaker_ids)}")
            for seg in transcript.segments:
                if seg.text.strip():
                    segments.append(Segment(start=seg.start + offset, end=seg.end + offset,
                                            text=seg.text, speaker=speaker or "speaker_0",
                                            confidence=seg.confidence,
                                            words=[Word(w.start + offset, w.end + offset, w.word,
                                                        w.probability) for w in seg.words]))
            done += span
            report(DIARIZE_END + done / speech_total * (100.0 - DIARIZE_END), "正在转录音频...")
        return segments, language

    async def _speech_regions(self, audio: Audio) -> list[tuple[int, int]] | None:
        """Speech regions (samples) from the hub's VAD, None without one."""
        try:
            vad = await self.hub.vad()
        except Exception as exc:  # noqa: BLE001 - no VAD: fixed windows still work
            self._warn_once("vad", "file_vad_unavailable", error=str(exc),
                            fallback=f"{self.settings.piece_seconds:.0f} s windows")
            return None
        if vad is None:
            return None
        regions: list[tuple[int, int]] = []
        window = int(VAD_WINDOW_S * SAMPLE_RATE)
        for start in range(0, len(audio), window):
            found = await self._run(vad.speech_regions, audio[start:start + window],
                                    engine=self.hub.engine_name("vad"))
            regions.extend((start + a, start + b) for a, b in found)
        return regions

    async def _speakers(self, audio: Audio, spans: list[tuple[float, float]], report: Report,
                        low: float, high: float) -> list[int] | None:
        """A speaker label (0, 1, ... by first appearance) per span (seconds), or None when
        there is no working speaker engine (the task goes on with one speaker)."""
        try:
            speaker = await self.hub.speaker()
        except Exception as exc:  # noqa: BLE001 - degrade to one speaker, never fail the task
            self._warn_once("speaker", "file_diarization_unavailable", error=str(exc),
                            fallback="one speaker")
            return None
        if speaker is None:
            self._warn_once("speaker", "file_diarization_unavailable", error="no speaker engine",
                            fallback="one speaker")
            return None
        # The embedding and clustering are the core's (asrhub.diarize); the engine is known to
        # exist here, so its own "unavailable" warning fires only on a real failure.
        try:
            found = await speaker_labels(
                self.hub, audio, spans, threshold=self.settings.speaker_threshold,
                max_speakers=self.settings.max_speakers, priority=Priority.BATCH,
                progress=lambda fraction: report(low + fraction * (high - low), "正在识别说话人..."))
        except (ExecutorBusy, ExecutorClosed):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing speaker engine must not fail the task
            log.warning("file_diarization_failed", error=str(exc), fallback="one speaker")
            return None
        return found[0] if found is not None else None
