"""One file job: decode → speech regions → speakers → transcribe piece by piece → result.

- The spooled upload is decoded a block (:data:`BLOCK_S`, cut in a pause) at a time with
  :class:`asrhub.pieces.PieceReader`: memory is O(block) whatever the file's length (issue 14).
- Speech regions come from the hub's VAD (silence is never sent to the ASR engine).
- Diarization (:mod:`asrhub.diarize`): one speaker embedding per region (short regions take their
  nearest neighbour's speaker), agglomerative clustering on cosine distance with a distance
  threshold (the number of speakers is estimated, not given). Without a VAD the ASR segments
  are diarized instead; without a speaker engine the file has one speaker (a logged warning).
- Consecutive regions of one speaker are merged into pieces of at most ``piece_seconds``, each
  transcribed by one executor call, so every segment has one speaker and live sessions of the
  other protocols get the workers between two pieces.

Every blocking step is a short call in the hub's inference executor at ``Priority.BATCH``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog

from asrhub.audio import probe_duration
from asrhub.diarize import embed_spans, labels_from_embeddings
from asrhub.engine import SAMPLE_RATE, Audio, Segment, Transcript, Word
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority
from asrhub.formats import to_srt
from asrhub.pieces import PieceReader, shift_segment
from asrhub.segmenter import Piece, plan_pieces, quietest_point
from asrhub.text import join_texts

log = structlog.get_logger("asrhub.file_transcription")

# Where each stage ends in the overall progress (percent); transcription takes the rest.
DIARIZE_END = 15.0
# The spooled file is decoded and analysed this much at a time (blocks cut in pauses): memory
# stays O(block) whatever the file's length, and no executor call holds a worker long.
BLOCK_S = 120.0

Report = Callable[[float, str], None]  # (overall percent, stage message), called on the loop


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
        self.peak_samples = 0  # the most decoded audio any reading held at once (high-water mark)

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
        ``words``. Raises AudioError for undecodable files.

        The spooled upload is read :data:`BLOCK_S` at a time (:class:`asrhub.pieces.PieceReader`,
        blocks cut in pauses), so memory stays O(block) whatever the file's length: each block
        gets its speech regions, then is transcribed piece by piece. With diarization the file
        is read twice: speakers are clustered over the embeddings of every region before the
        pieces (which never cross a change of speaker) can be planned."""
        report(0.0, "正在解码音频...")
        started = time.perf_counter()
        total = await self._run(probe_duration, path, engine=None) or 0.0
        vad = await self._vad()
        diarize = self.settings.diarization and await self._speaker_engine() is not None
        last = PieceReader(path, BLOCK_S)

        def done(sample: int) -> None:  # transcribed up to ``sample`` of the file
            if total:
                share = min(1.0, sample / (total * SAMPLE_RATE))
                report(DIARIZE_END + share * (100.0 - DIARIZE_END), "正在转录音频...")

        if vad is not None and diarize:
            # Pass 1: regions and one embedding per region, block by block.
            plan: list[tuple[int, int, list[tuple[int, int]]]] = []  # offset, length, regions
            embeddings: dict[int, Any] | None = {}
            async for offset, audio in self._blocks(PieceReader(path, BLOCK_S), report, 0.0,
                                                    DIARIZE_END, "正在识别说话人..."):
                found = await self._regions(vad, audio)
                first = sum(len(r) for _, _, r in plan)
                plan.append((offset, len(audio), found))
                if embeddings is not None and found:
                    got = await self._embed(audio, [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in found])
                    if got is None:
                        embeddings = None  # no working speaker engine: one speaker
                    else:
                        embeddings.update((first + i, e) for i, e in got.items())
            spans = [((offset + a) / SAMPLE_RATE, (offset + b) / SAMPLE_RATE)
                     for offset, _, found in plan for a, b in found]
            labels = self._labels(spans, embeddings) if embeddings is not None and spans else None
            # Pass 2: the same blocks again (decoding is deterministic), now transcribed.
            segments: list[Segment] = []
            language = self.settings.language or None
            index = 0
            speaker_ids: dict[int, str] = {}
            async for offset, audio in self._blocks(last, report, DIARIZE_END, 100.0, "正在转录音频..."):
                if not plan or plan[0][0] != offset or plan[0][1] != len(audio):
                    raise RuntimeError("the file decoded differently on its second reading")
                found = plan.pop(0)[2]
                block_labels = labels[index:index + len(found)] if labels is not None else None
                index += len(found)
                pieces = self._plan(audio, found, block_labels)
                language = await self._transcribe_pieces(audio, offset, pieces, segments, language,
                                                         speaker_ids, words=words, done=done)
        else:
            segments, language = [], self.settings.language or None
            async for offset, audio in self._blocks(last, report, DIARIZE_END, 100.0, "正在转录音频..."):
                found = await self._regions(vad, audio) if vad is not None else None
                pieces = (fixed_pieces(len(audio), int(self.settings.piece_seconds * SAMPLE_RATE))
                          if found is None else self._plan(audio, found, None))
                language = await self._transcribe_pieces(audio, offset, pieces, segments, language,
                                                         {}, words=words, done=done)
            if vad is None and diarize and segments:
                # No VAD: speakers of the ASR segments instead of the speech regions.
                labels = await self._segment_speakers(path, [(s.start, s.end) for s in segments])
                for seg, label in zip(segments, labels or [0] * len(segments), strict=True):
                    seg.speaker = f"speaker_{label}"
        duration = last.samples / SAMPLE_RATE
        log.info("file_transcribed", audio_s=round(duration, 2), probed_s=round(total, 2),
                 peak_audio_s=round(last.peak_samples / SAMPLE_RATE, 1),
                 processing_s=round(time.perf_counter() - started, 3))
        return build_result(segments, duration, language), duration

    async def _blocks(self, reader: PieceReader, report: Report, low: float, high: float,
                      message: str) -> AsyncIterator[tuple[int, Audio]]:
        """(sample offset, audio) of each block ``reader`` decodes (in the executor); reports
        progress from ``low`` to ``high`` percent by position in the file."""
        total = 0
        try:
            await self._run(reader.open, engine=None)
            total = int((await self._run(reader.duration, engine=None) or 0.0) * SAMPLE_RATE)
            report(low, message)
            while (got := await self._run(reader.next_piece, engine=None)) is not None:
                yield got
                if total:
                    report(low + min(1.0, reader.offset / total) * (high - low), message)
            report(high, message)
        finally:
            reader.close()
            self.peak_samples = max(self.peak_samples, reader.peak_samples)

    def _plan(self, audio: Audio, regions: list[tuple[int, int]],
              speakers: list[int] | None) -> list[Piece]:
        return plan_pieces(regions, len(audio), max_len=int(self.settings.piece_seconds * SAMPLE_RATE),
                           speakers=speakers, split=lambda lo, hi: quietest_point(audio, lo, hi))

    async def _transcribe_pieces(self, audio: Audio, offset: int, pieces: list[Piece],
                                 segments: list[Segment], language: str | None,
                                 speaker_ids: dict[int, str], *, words: bool = False,
                                 done: Callable[[int], None]) -> str | None:
        """Transcribe the ``pieces`` of one block (starting at sample ``offset`` of the file),
        appending to ``segments`` with absolute times and calling ``done`` with the file's
        sample each piece ends at; returns the language to go on with."""
        engine_name = self.hub.engine_name("asr", self.settings.asr_engine or None)
        engine = await self.hub.asr(self.settings.asr_engine or None)
        # An engine that decodes several calls at once (Whisper: a CTranslate2 worker per core,
        # one thread each) gets that many pieces side by side; the language is detected on
        # the first piece with speech first, alone.
        lanes = max(1, int(getattr(engine, "num_workers", 1) or 1))
        index = 0
        while index < len(pieces):
            group = pieces[index:index + (lanes if language is not None else 1)]
            index += len(group)
            transcripts: list[Transcript] = await asyncio.gather(*(
                self._run(engine.transcribe, audio[piece.start:piece.end], engine=engine_name,
                          language=language, word_timestamps=words) for piece in group))
            for piece, transcript in zip(group, transcripts, strict=True):
                # Detect the language once (on the first piece with speech), then keep it.
                if language is None and transcript.language and transcript.text.strip():
                    language = transcript.language
                shift = (offset + piece.start) / SAMPLE_RATE
                # Speakers renumbered in order of first speech (a region may hold no words).
                speaker = None
                if piece.speaker is not None and transcript.text.strip():
                    speaker = speaker_ids.setdefault(piece.speaker, f"speaker_{len(speaker_ids)}")
                segments.extend(shift_segment(seg, shift, speaker=speaker or "speaker_0")
                                for seg in transcript.segments if seg.text.strip())
                done(offset + piece.end)
        return language

    async def _vad(self) -> Any:
        """The hub's VAD engine, None without one (fixed windows then)."""
        try:
            vad = await self.hub.vad()
        except Exception as exc:  # noqa: BLE001 - no VAD: fixed windows still work
            self._warn_once("vad", "file_vad_unavailable", error=str(exc),
                            fallback=f"{self.settings.piece_seconds:.0f} s windows")
            return None
        return vad

    async def _regions(self, vad: Any, audio: Audio) -> list[tuple[int, int]]:
        """Speech regions (samples) of one block."""
        found = await self._run(vad.speech_regions, audio, engine=self.hub.engine_name("vad"))
        return [(int(a), int(b)) for a, b in found]

    async def _speaker_engine(self) -> Any:
        try:
            speaker = await self.hub.speaker()
        except Exception as exc:  # noqa: BLE001 - degrade to one speaker, never fail the task
            self._warn_once("speaker", "file_diarization_unavailable", error=str(exc),
                            fallback="one speaker")
            return None
        if speaker is None:
            self._warn_once("speaker", "file_diarization_unavailable", error="no speaker engine",
                            fallback="one speaker")
        return speaker

    async def _embed(self, audio: Audio, spans: list[tuple[float, float]]) -> dict[int, Any] | None:
        """Embeddings of the spans (seconds into ``audio``) by span index, None when there is
        no working speaker engine (the task goes on with one speaker)."""
        if await self._speaker_engine() is None:
            return None
        # The embedding is the core's (asrhub.diarize); the engine is known to exist here, so
        # its own "unavailable" warning fires only on a real failure.
        try:
            return await embed_spans(self.hub, audio, spans, priority=Priority.BATCH)
        except (ExecutorBusy, ExecutorClosed):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing speaker engine must not fail the task
            log.warning("file_diarization_failed", error=str(exc), fallback="one speaker")
            return None

    async def _speakers(self, audio: Audio, spans: list[tuple[float, float]], report: Report,
                        low: float, high: float) -> list[int] | None:
        """A speaker label (0, 1, ... by first appearance) per span (seconds into ``audio``), or
        None without a working speaker engine."""
        if await self._speaker_engine() is None:
            return None
        embeddings = await self._embed(audio, spans)
        report(high, "正在识别说话人...")
        return None if embeddings is None else self._labels(spans, embeddings)

    def _labels(self, spans: list[tuple[float, float]], embeddings: dict[int, Any]) -> list[int] | None:
        try:
            return labels_from_embeddings(spans, embeddings, threshold=self.settings.speaker_threshold,
                                          max_speakers=self.settings.max_speakers)
        except ImportError as exc:  # scipy comes with the "speaker" extra
            self._warn_once("speaker", "file_diarization_unavailable", error=str(exc),
                            fallback="one speaker")
            return None

    async def _segment_speakers(self, path: Path, spans: list[tuple[float, float]]) -> list[int] | None:
        """A speaker label per span (seconds in the file), the file read once more block by
        block; a span crossing two blocks takes its neighbour's speaker."""
        embeddings: dict[int, Any] = {}
        async for offset, audio in self._blocks(PieceReader(path, BLOCK_S), lambda p, s: None,
                                                99.0, 99.0, ""):
            begin, end = offset / SAMPLE_RATE, (offset + len(audio)) / SAMPLE_RATE
            inside = [i for i, (a, b) in enumerate(spans) if a >= begin and b <= end]
            if not inside:
                continue
            got = await self._embed(audio, [(spans[i][0] - begin, spans[i][1] - begin) for i in inside])
            if got is None:
                return None
            embeddings.update((inside[k], e) for k, e in got.items())
        return self._labels(spans, embeddings)

