#!/usr/bin/env python3
"""Concurrent real-time streams: how many can one machine hold with partials and quick finals?

N streams (staggered starts) each play real English recordings from testdata, one sentence
after another with 1.2 s of silence between them, in 100 ms chunks at real-time pace, through
the hub's own streaming path, exactly what the protocols do:

    hub = asrhub.testing.make_hub({"engines": {"whisper": {"model": M}}})
    hub.make_executor()
    stream = engine.open_stream(language="en", vad=(await hub.vad()).open_stream())
    StreamPump(hub.executor, stream, on_hypotheses)        # feed(chunk) every 100 ms

with the GIL switch interval the server sets and a LoopLagMonitor on the loop.

In the same run, at the same N, through the same executor, a baseline streamer that re-decodes
the growing buffer (the approach of WhisperLive and similar servers), kept minimal:
:class:`RedecodeStream`. It is the same kind of sync ASRStream, driven by the same StreamPump,
with the same Silero VAD stream cutting utterances; every 1 s of new audio (the hub's
``partial_interval``) it decodes the whole current utterance with plain faster-whisper
``WhisperModel.transcribe`` (30 s window, beam 1, language "en", no VAD filter, not conditioned
on previous text, faster-whisper's defaults otherwise) on the hub engine's model files with the
same compute type, threads and workers;
when the VAD reports the end of the utterance it decodes the utterance once more: that is the
final. It never skips or defers a decode. The hub differs in three ways (plugins/whisper/README.md):
an encoder window sized to the audio, the early decode 0.2 s into a pause that then stands as
the final, and partials put off while the model is busy.

Measured per utterance (a clip in a stream's timeline): final latency = when the final for it
reached the session callback - when the speaker stopped (the end of that clip's audio in the
timeline, leading and trailing quiet trimmed from each clip beforehand, so the end of the clip
is the end of speech; known from the timeline, not from the hypothesis). A final is matched to
the clip its [start, end] overlaps most; several finals on one clip (the VAD split it) are
joined and the last one's arrival counts. WER of the final against the MANIFEST transcript.
Also partials per stream and partial lag (arrival - when the audio it covers was spoken),
decodes per second of audio, event-loop lag p50/p99/max, process CPU seconds per second of
audio, and the StreamPump backlog (audio queued or in accept) sampled every 0.2 s.

"Keeps up" = final p95 <= 1.0 s, every utterance got a final, and no growing backlog (the mean
backlog over the last third of the run is not more than 0.5 s above the first third's).

``--stop-each``: every sentence is its own session that ends with ``stop`` (``pump.finish()``)
sent right after the last chunk of the sentence (its trailing quiet trimmed), so the final
always needs a decode after ``stop``: the latency is stop → final, the case of a push-to-talk
or a client that stops when the speaker does. The next session of that stream opens after the
1.2 s gap. ``--workers``: executor workers (default: the hub's default, ``[executor] workers``
= 16): a stream's decode waits in its executor thread, so concurrent decodes can only be
batched across as many sessions as there are workers.

    .venv/bin/python bench/concurrency.py --model tiny.en --streams 6 --out -
    .venv/bin/python bench/concurrency.py --model base --sweep 1,2,4,6 --seconds 30 \
        --out bench/results/concurrency.md      # (the default) replaces the "base" section
    .venv/bin/python bench/concurrency.py --model tiny.en --stop-each --systems hub \
        --sweep 1,8,12,16 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import platform
import re
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asrhub.audio import decode_file
from asrhub.engine import SAMPLE_RATE, ASRStream, Audio, Hypothesis, VADEvent, VADStream
from asrhub.executor import InferenceExecutor
from asrhub.hub import Hub
from asrhub.loopmon import LoopLagMonitor
from asrhub.streaming import BacklogFull, StreamPump
from asrhub.testing import make_hub, manifest, normalize_english, testdata_dir, wer
from asrhub.text import join_texts

# English recordings with human references (testdata/NOTES.tsv); clips whose label is known to
# be wrong (speechbrain spk1_snt2, spk2_snt1/3/5) or model output are left out.
CLIPS = [
    "en/pocketsphinx_librivox_ss01_0870.wav",
    "en/speechbrain_example1.wav",
    "en/pocketsphinx_librivox_ss01_0880.wav",
    "en/speechbrain_spk1_snt1.wav",
    "en/pocketsphinx_librivox_ss01_0890.wav",
    "en/speechbrain_spk2_snt2.wav",
    "en/pocketsphinx_librivox_ss01_0920.wav",
    "en/speechbrain_spk1_snt3.wav",
    "en/pocketsphinx_librivox_ss01_0930.wav",
    "en/speechbrain_spk1_snt4.wav",
    "en/pocketsphinx_goforward.wav",
    "en/speechbrain_spk2_snt4.wav",
    "en/speechbrain_spk1_snt5.wav",
]
CHUNK = SAMPLE_RATE // 10  # 100 ms per feed
LEAD_S = 0.3  # silence before a stream's first sentence
GAP_S = 1.2  # silence between sentences (and after the last)
STAGGER_S = 0.37  # stream i starts i * STAGGER_S after stream 0
TRIM_DB = -40.0  # 10 ms frames this far below the loudest one count as quiet at a clip's ends
MAX_BACKLOG_S = 30.0  # StreamPump limit (streaming_stt's default is 20 * 1.5 + 5 feeds)
BACKLOG_EVERY_S = 0.2
TARGET_FINAL_P95_S = 1.0
TARGET_LAG_P99_MS = 10.0
GROWTH_S = 0.5
HISTORY = 3 * SAMPLE_RATE  # audio kept before an utterance (the VAD reports starts late)


# ---------------------------------------------------------------------- audio


@dataclass
class Clip:
    name: str
    reference: str
    audio: Audio


@dataclass
class Utterance:
    clip: str
    reference: str
    start: int  # samples from the start of the stream
    end: int  # the speaker stops here


@dataclass
class Timeline:
    audio: Audio
    utterances: list[Utterance]


def trim_quiet(audio: Audio) -> Audio:
    """Cut leading and trailing quiet (10 ms frames under TRIM_DB of the loudest frame)."""
    frame = SAMPLE_RATE // 100
    frames = audio[:len(audio) // frame * frame].reshape(-1, frame)
    rms = np.sqrt(np.mean(np.square(frames), axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > TRIM_DB)
    return audio[loud[0] * frame:(loud[-1] + 1) * frame]


def load_clips() -> list[Clip]:
    rows = manifest()
    return [Clip(name, rows[name]["transcript"], trim_quiet(decode_file(testdata_dir() / name)))
            for name in CLIPS]


def build_timeline(clips: list[Clip], first: int, seconds: float) -> Timeline:
    """LEAD_S of silence, then clips from ``first`` on, each followed by GAP_S of silence,
    until at least ``seconds`` of audio."""
    pieces = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)]
    at, utterances, index = len(pieces[0]), [], first
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
    while at < seconds * SAMPLE_RATE:
        clip = clips[index % len(clips)]
        utterances.append(Utterance(clip.name, clip.reference, at, at + len(clip.audio)))
        pieces += [clip.audio, gap]
        at += len(clip.audio) + len(gap)
        index += 1
    return Timeline(np.concatenate(pieces), utterances)


# ---------------------------------------------------------------------- the baseline


@dataclass
class BaselineStats:
    decodes: int = 0
    decode_seconds: float = 0.0


class RedecodeStream:
    """The baseline: re-decode the whole current utterance every ``interval`` seconds of new
    audio with plain ``WhisperModel.transcribe`` (30 s window); on the VAD's end, decode it
    once more for the final. A sync ASRStream, like the hub's."""

    def __init__(self, model, vad: VADStream, interval_s: float, language: str = "en") -> None:
        self._model = model  # faster_whisper.WhisperModel
        self._vad = vad
        self._interval = int(interval_s * SAMPLE_RATE)
        self._language = language
        self._audio = np.zeros(0, np.float32)
        self._base = 0  # stream sample of self._audio[0]
        self._clock = 0
        self._vad_offset = 0
        self._start: int | None = None  # the open utterance
        self._decoded_to = 0
        self._count = 0
        self.stats = BaselineStats()

    def accept(self, pcm: Audio) -> list[Hypothesis]:
        self._audio = np.concatenate([self._audio, pcm])
        self._clock += len(pcm)
        out: list[Hypothesis] = []
        for event in self._vad.accept(pcm):
            out += self._on_event(event)
        if self._start is not None and self._clock - self._decoded_to >= self._interval:
            self._decoded_to = self._clock
            text = self._transcribe(self._start, self._clock)
            if text:
                out.append(self._hypothesis(text, False, self._clock))
        keep = self._start if self._start is not None else self._clock - HISTORY
        if keep - self._base > 5 * SAMPLE_RATE:
            self._audio = self._audio[keep - self._base:]
            self._base = keep
        return out

    def finish(self) -> list[Hypothesis]:
        out: list[Hypothesis] = []
        for event in self._vad.finish():
            out += self._on_event(event)
        if self._start is not None:
            out += self._on_event(VADEvent("end", self._clock - self._vad_offset))
        self._vad.reset()
        self._vad_offset = self._clock
        return out

    def reset(self) -> None:
        self._vad.reset()
        self._vad_offset = self._clock
        self._start = None

    def _on_event(self, event: VADEvent) -> list[Hypothesis]:
        sample = event.sample + self._vad_offset
        if event.kind == "start":
            if self._start is None:
                self._start = self._decoded_to = max(sample, self._base)
            return []
        if self._start is None:
            return []
        start, self._start = self._start, None
        text = self._transcribe(start, sample)
        if not text:
            return []
        final = self._hypothesis(text, True, sample, start)
        self._count += 1
        return [final]

    def _transcribe(self, begin: int, end: int) -> str:
        started = time.perf_counter()
        audio = self._audio[max(0, begin - self._base):end - self._base]
        segments, _ = self._model.transcribe(audio, language=self._language, beam_size=1,
                                             condition_on_previous_text=False, vad_filter=False)
        text = join_texts([segment.text for segment in segments])
        self.stats.decodes += 1
        self.stats.decode_seconds += time.perf_counter() - started
        return text

    def _hypothesis(self, text: str, final: bool, end: int, start: int | None = None) -> Hypothesis:
        start = self._start if start is None else start
        assert start is not None
        return Hypothesis(text=text, is_final=final, utterance=self._count + 1,
                          start=start / SAMPLE_RATE, end=end / SAMPLE_RATE)


# ---------------------------------------------------------------------- one phase


@dataclass
class StreamRecord:
    timeline: Timeline
    t0: float = 0.0  # wall clock (perf_counter) of the stream's sample 0
    finals: list[tuple[float, Hypothesis]] = field(default_factory=list)
    partials: list[tuple[float, Hypothesis]] = field(default_factory=list)
    failed: str = ""
    pump: StreamPump | None = None
    feeding: bool = False
    fed_to: int = 0  # samples fed
    stream: Any = None  # WhisperStream or RedecodeStream (both keep .stats)
    # --stop-each: utterance index -> finals of its own session; streams of past sessions
    sessions: dict[int, list[tuple[float, Hypothesis]]] = field(default_factory=dict)
    closed_streams: list[Any] = field(default_factory=list)

    def wall(self, sample: int) -> float:
        return self.t0 + sample / SAMPLE_RATE


@dataclass
class UtteranceResult:
    latency: float | None  # None: no final
    clip: str
    text: str
    wer: float | None
    ref_words: int
    spoken_at: float  # seconds into the phase


@dataclass
class PhaseResult:
    system: str
    streams: int
    audio_s: float
    wall_s: float
    cpu_s: float
    decodes: int
    decode_seconds: float  # wall time inside decode calls, waiting for the CTranslate2 worker included
    utterances: list[UtteranceResult]
    extra_finals: int
    partials_per_stream: float
    partial_lags: list[float]
    loop_lag_ms: dict[str, float]
    backlog_max: float
    backlog_first: float
    backlog_last: float
    failures: list[str]
    batches: str = "—"  # mean / largest decodes per engine call (asrhub's batcher)
    alone: dict[str, str] | None = None  # --stop-each: each clip's final text with 1 stream

    @property
    def same_as_alone(self) -> str:
        """How many finals are word for word what the same clip gets with one stream."""
        if self.alone is None:
            return "—"
        scored = [u for u in self.utterances if u.clip in self.alone]
        same = sum(normalize_english(u.text) == normalize_english(self.alone[u.clip]) for u in scored)
        return f"{same}/{len(scored)}"

    @property
    def wer_alone(self) -> float:
        """The WER the same utterances get with one stream (each clip's text alone)."""
        if self.alone is None:
            return float("nan")
        scored = [u for u in self.utterances if u.clip in self.alone]
        words = sum(u.ref_words for u in scored)
        errors = sum(wer(_reference(u.clip), self.alone[u.clip]) * u.ref_words for u in scored)
        return errors / words if words else float("nan")

    @property
    def latencies(self) -> np.ndarray:
        return np.array([u.latency for u in self.utterances if u.latency is not None])

    @property
    def missed(self) -> int:
        return sum(u.latency is None for u in self.utterances)

    def final_pct(self, q: float) -> float:
        lat = self.latencies
        return float(np.percentile(lat, q)) if len(lat) else float("nan")

    @property
    def wer(self) -> float:
        scored = [u for u in self.utterances if u.wer is not None]
        words = sum(u.ref_words for u in scored)
        return sum(u.wer * u.ref_words for u in scored) / words if words else float("nan")

    @property
    def growing(self) -> bool:
        return self.backlog_last > self.backlog_first + GROWTH_S

    @property
    def shortfalls(self) -> list[str]:
        """Why the system did not keep up (empty: it did)."""
        out = []
        if not self.final_pct(95) <= TARGET_FINAL_P95_S:
            out.append("final p95")
        if self.growing:
            out.append("backlog grows")
        if self.missed:
            out.append("missed finals")
        if self.failures:
            out.append("backlog full")
        return out

    @property
    def keeps_up(self) -> bool:
        return not self.shortfalls


_REFERENCES: dict[str, str] = {}


def _reference(clip: str) -> str:
    if not _REFERENCES:
        _REFERENCES.update({name: row["transcript"] for name, row in manifest().items()})
    return _REFERENCES[clip]


def score(record: StreamRecord, phase_start: float) -> tuple[list[UtteranceResult], int]:
    """Match finals to the timeline's utterances (most overlap); latency from the timeline."""
    utterances = record.timeline.utterances
    matched: dict[int, list[tuple[float, Hypothesis]]] = {i: [] for i in range(len(utterances))}
    extra = 0
    for index, finals in record.sessions.items():  # --stop-each: a session per utterance
        matched[index] = finals
    for arrival, hyp in record.finals if not record.sessions else ():
        begin, end = hyp.start * SAMPLE_RATE, hyp.end * SAMPLE_RATE
        overlaps = [min(end, u.end) - max(begin, u.start) for u in utterances]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            matched[best].append((arrival, hyp))
        else:
            extra += 1
    results = []
    for i, utt in enumerate(utterances):
        if utt.end > record.fed_to:
            continue  # never fully fed (the stream failed): not scored here, see failures
        finals = matched[i]
        text = join_texts([hyp.text for _, hyp in finals])
        ref_words = len(normalize_english(utt.reference).split())
        results.append(UtteranceResult(
            latency=max(a for a, _ in finals) - record.wall(utt.end) if finals else None,
            clip=utt.clip, text=text, wer=wer(utt.reference, text) if finals else None, ref_words=ref_words,
            spoken_at=record.wall(utt.end) - phase_start))
    return results, extra


async def run_phase(system: str, executor: InferenceExecutor, open_stream: Callable,
                    timelines: list[Timeline], stop_each: bool = False) -> PhaseResult:
    records = [StreamRecord(t) for t in timelines]
    lag = LoopLagMonitor()
    lag.start()
    await asyncio.sleep(0.5)  # a few lag samples of the idle loop
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()

    async def drive_sessions(index: int, record: StreamRecord) -> None:
        """--stop-each: one session per utterance, stop right after its last chunk."""
        record.t0 = start + index * STAGGER_S
        audio = record.timeline.audio
        for number, utterance in enumerate(record.timeline.utterances):
            begin = max(0, utterance.start - int(LEAD_S * SAMPLE_RATE))
            stream = await executor.run(open_stream)
            record.stream = stream
            finals = record.sessions.setdefault(number, [])

            async def on_hypotheses(hyps: list[Hypothesis], finals=finals, begin=begin) -> None:
                now = time.perf_counter()
                for hyp in hyps:
                    # the session's clock starts at ``begin`` of the timeline
                    hyp = dataclasses.replace(hyp, start=hyp.start + begin / SAMPLE_RATE,
                                              end=hyp.end + begin / SAMPLE_RATE)
                    (finals if hyp.is_final else record.partials).append((now, hyp))

            pump = StreamPump(executor, stream, on_hypotheses, engine="whisper",
                              max_backlog_s=MAX_BACKLOG_S)
            record.pump = pump
            try:
                for at in range(begin, utterance.end, CHUNK):
                    chunk = audio[at:min(at + CHUNK, utterance.end)]
                    delay = record.wall(at + len(chunk)) - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    try:
                        pump.feed(chunk)
                    except BacklogFull as exc:
                        record.failed = f"stream {index}: backlog full ({exc})"
                        return
                    record.fed_to = at + len(chunk)
                    record.feeding = True
                await pump.finish()  # stop, right after the last word
                record.fed_to = utterance.end
            finally:
                record.feeding = False
                await pump.close()
                record.closed_streams.append(stream)

    async def drive(index: int, record: StreamRecord) -> None:
        if stop_each:
            await drive_sessions(index, record)
            return
        stream = await executor.run(open_stream)
        record.stream = stream

        async def on_hypotheses(hyps: list[Hypothesis]) -> None:
            now = time.perf_counter()
            for hyp in hyps:
                (record.finals if hyp.is_final else record.partials).append((now, hyp))

        pump = StreamPump(executor, stream, on_hypotheses, engine="whisper",
                          max_backlog_s=MAX_BACKLOG_S)
        record.pump = pump
        record.t0 = start + index * STAGGER_S
        audio = record.timeline.audio
        try:
            for at in range(0, len(audio), CHUNK):
                chunk = audio[at:at + CHUNK]
                delay = record.wall(at + len(chunk)) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    pump.feed(chunk)
                except BacklogFull as exc:
                    record.failed = f"stream {index}: backlog full at {at / SAMPLE_RATE:.1f} s ({exc})"
                    return
                record.fed_to = at + len(chunk)
                record.feeding = True
            await pump.finish()
        finally:
            record.feeding = False
            await pump.close()

    done = asyncio.Event()
    backlog_series: list[tuple[float, float, float]] = []  # (since start, mean, max)

    async def watch() -> None:
        while not done.is_set():
            live = [r.pump.backlog_seconds for r in records if r.pump is not None and r.feeding]
            if live:
                backlog_series.append((time.perf_counter() - start, float(np.mean(live)), max(live)))
            await asyncio.sleep(BACKLOG_EVERY_S)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*[drive(i, r) for i, r in enumerate(records)])
    finally:
        done.set()
        await watcher
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    await lag.stop()

    utterances: list[UtteranceResult] = []
    extra = 0
    for record in records:
        scored, more = score(record, start)
        utterances += scored
        extra += more
    feed_end = max(r.t0 - start + len(r.timeline.audio) / SAMPLE_RATE for r in records)
    third = feed_end / 3
    first = [b for t, b, _ in backlog_series if t < third] or [0.0]
    last = [b for t, b, _ in backlog_series if feed_end - third <= t <= feed_end] or [0.0]
    partial_lags = [arrival - r.wall(int(round(h.end * SAMPLE_RATE)))
                    for r in records for arrival, h in r.partials]
    return PhaseResult(
        system=system, streams=len(records),
        audio_s=sum(r.fed_to for r in records) / SAMPLE_RATE, wall_s=wall,
        cpu_s=(cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
        decodes=sum(s.stats.decodes for r in records for s in _streams(r)),
        decode_seconds=sum(s.stats.decode_seconds for r in records for s in _streams(r)),
        utterances=utterances, extra_finals=extra,
        partials_per_stream=float(np.mean([len(r.partials) for r in records])),
        partial_lags=partial_lags, loop_lag_ms=lag.summary_ms(),
        backlog_max=max((m for _, _, m in backlog_series), default=0.0),
        backlog_first=float(np.mean(first)), backlog_last=float(np.mean(last)),
        failures=[r.failed for r in records if r.failed])


def _streams(record: StreamRecord) -> list[Any]:
    if record.closed_streams:
        return record.closed_streams
    return [record.stream] if record.stream is not None else []


# ---------------------------------------------------------------------- the run


@dataclass
class RunInfo:
    model: str
    command: str
    started: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pairs: list[list[PhaseResult]] = field(default_factory=list)


async def measure(args: argparse.Namespace, counts: list[int], info: RunInfo) -> None:
    if args.gil_switch_ms > 0:
        sys.setswitchinterval(args.gil_switch_ms / 1000)  # what Server.start does
    executor_section = {"workers": args.workers} if args.workers else {}
    hub: Hub = make_hub({"server": {"state_dir": args.state_dir},
                         "executor": executor_section,
                         "engines": {"whisper": {"model": args.model, **args.whisper}}})
    executor = hub.make_executor()
    engine = await hub.asr()
    vad = await hub.vad()
    settings = engine.settings
    clips = load_clips()
    await executor.run(engine.decode, clips[0].audio, "en")  # warm-up

    def open_hub_stream() -> ASRStream:
        return engine.open_stream(language="en", vad=vad.open_stream())

    systems: list[tuple[str, Callable]] = []
    if "hub" in args.systems:
        systems.append(("asrhub", open_hub_stream))
    if "baseline" in args.systems:
        from faster_whisper import WhisperModel

        model = await executor.run(lambda: WhisperModel(
            str(engine.model_path), device="cpu", compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads, num_workers=settings.num_workers,
            local_files_only=True))
        interval = settings.partial_interval or 1.0
        await executor.run(lambda: list(model.transcribe(clips[0].audio, language="en")[0]))

        def open_baseline_stream() -> RedecodeStream:
            return RedecodeStream(model, vad.open_stream(), interval)

        systems.append(("re-decode baseline", open_baseline_stream))

    batcher = getattr(engine, "batcher", None)
    alone: dict[str, dict[str, str]] = {}
    if args.stop_each:
        # Each clip once, one stream, real time: the text every clip gets alone (the 1-stream
        # WER of the utterances of every N, and whether load or batching changed any text).
        total = sum(len(c.audio) / SAMPLE_RATE + GAP_S for c in clips)
        for name, opener in systems:
            solo = await run_phase(name, executor, opener, [build_timeline(clips, 0, total)], True)
            alone[name] = {u.clip: u.text for u in solo.utterances if u.latency is not None}
            print(f"  {name}: each clip alone: WER {solo.wer:.3f}, {len(alone[name])} clips",
                  flush=True)
    try:
        for count in counts:
            timelines = [build_timeline(clips, i, args.seconds) for i in range(count)]
            results = []
            for name, opener in systems:
                if batcher is not None:
                    batcher.stats = type(batcher.stats)()
                result = await run_phase(name, executor, opener, timelines, args.stop_each)
                result.alone = alone.get(name)
                results.append(result)
                if batcher is not None and name == "asrhub":
                    stats = batcher.stats
                    result.batches = f"{stats.mean_size:.2f} / {stats.largest}"
                print_rows([result])
                if args.verbose:
                    for u in result.utterances:
                        print(f"    {u.spoken_at:6.1f}s  latency {u.latency}  wer {u.wer}  {u.text!r}")
                await asyncio.sleep(1.0)
            info.pairs.append(results)
    finally:
        await executor.shutdown()
        hub.unload_engines()


# ---------------------------------------------------------------------- report

HEADER = ("| streams | system | utterances | missed | extra finals | final p50 s | final p95 s | final max s "
          "| partials / stream | partial lag p50 / p95 s | decodes / audio s | s / decode | WER "
          "| 1-stream WER, same text | loop lag p50 / p99 / max ms | CPU s / audio s | backlog first → last third, max s "
          "| batch mean / max | keeps up |")


def row(r: PhaseResult) -> str:
    lag = r.loop_lag_ms
    plag = (f"{np.percentile(r.partial_lags, 50):.2f} / {np.percentile(r.partial_lags, 95):.2f}"
            if r.partial_lags else "—")
    return (f"| {r.streams} | {r.system} | {len(r.utterances)} | {r.missed} | {r.extra_finals} "
            f"| {r.final_pct(50):.2f} | {r.final_pct(95):.2f} | {r.final_pct(100):.2f} "
            f"| {r.partials_per_stream:.1f} | {plag} | {r.decodes / r.audio_s:.2f} "
            f"| {r.decode_seconds / max(1, r.decodes):.2f} | {r.wer:.3f} "
            f"| {r.wer_alone:.3f}, {r.same_as_alone} "
            f"| {lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f} | {r.cpu_s / r.audio_s:.3f} "
            f"| {r.backlog_first:.2f} → {r.backlog_last:.2f}, {r.backlog_max:.2f} | {r.batches} "
            f"| {'yes' if r.keeps_up else 'no: ' + ', '.join(r.shortfalls)} |")


def print_rows(results: list[PhaseResult]) -> None:
    for r in results:
        print(row(r), flush=True)
        for failure in r.failures:
            print("    " + failure)


def section(info: RunInfo) -> str:
    lines = [f"## Whisper {info.model}", "",
             f"{info.started} · {platform.machine()} · {os.cpu_count()} cores · "
             f"Python {platform.python_version()} · load average (1/5/15 min) before "
             f"{'/'.join(f'{x:.2f}' for x in info.load_before)}, after "
             f"{'/'.join(f'{x:.2f}' for x in info.load_after)}", "",
             "```", info.command, "```", "", HEADER,
             "|" + "---|" * HEADER.count(" | ") + "---|"]
    for pair in info.pairs:
        lines += [row(r) for r in pair]
    failures = [f for pair in info.pairs for r in pair for f in r.failures]
    if failures:
        lines += ["", "Failures:", *[f"- {f}" for f in failures]]
    def counts(system: str, ok: Callable[[PhaseResult], bool]) -> str:
        return ", ".join(str(r.streams) for p in info.pairs for r in p
                         if (r.system == "asrhub") == (system == "asrhub") and ok(r)) or "none"

    lines += ["", f"Kept up (final p95 ≤ {TARGET_FINAL_P95_S} s, every utterance final, no growing "
              f"backlog) at N = asrhub: {counts('asrhub', lambda r: r.keeps_up)}; baseline: "
              f"{counts('baseline', lambda r: r.keeps_up)}. Backlog steady (throughput alone, "
              f"latency aside) at N = asrhub: {counts('asrhub', lambda r: not r.growing)}; "
              f"baseline: {counts('baseline', lambda r: not r.growing)}.", ""]
    return "\n".join(lines)


FILE_HEADER = """# Concurrent real-time streams (bench/concurrency.py)

Each stream plays real English recordings from testdata (leading/trailing quiet trimmed, 1.2 s of
silence between sentences, 0.3 s before the first; stream *i* starts with clip *i* and
0.37·*i* s after stream 0) in 100 ms chunks at real-time pace through the hub's streaming path
(`make_hub` → `hub.make_executor()` → `engine.open_stream(language="en",
vad=silero.open_stream())` → `StreamPump`), with a `LoopLagMonitor` on the loop and the server's
GIL switch interval (1 ms). Whisper settings are the defaults (int8, 2 threads, 1 CTranslate2
worker, beam 1, partials every 1 s, finals with a window of at least 15 s, partials batched across sessions
up to 8, finals one at a time) unless the section title names others; the executor is the hub's
default (16 workers, nice 5) unless the section names `--workers`. Sections titled "stop
after each sentence" (`--stop-each`) make every sentence its own session, ended by `stop` right
after its last word: there, *final* is stop → final. The machine is shared with other jobs
(load average in each section): latencies are noisy, error rates are not.

**Baseline** (`RedecodeStream`, same run, same N, same executor, same StreamPump and Silero
VAD stream): every 1 s of new audio it decodes the whole current utterance with plain
faster-whisper `WhisperModel.transcribe` on the same model files (30 s window, beam 1, language
en, no VAD filter, not conditioned on previous text; faster-whisper's defaults otherwise —
temperature fallback and timestamps cost nothing measurable here: 0.39 s per tiny.en call with
them, 0.42-0.44 s without); when the VAD reports the end of the utterance it decodes it once
more and that is the final. It never skips or defers a decode. That is the
re-decode-the-growing-buffer approach of WhisperLive, kept minimal and given the hub's VAD
segmentation (kinder to it than WhisperLive's own rule of finalising a segment once its text
repeats).

- **final**: arrival of the final at the session callback − the moment the speaker stopped (the
  end of that clip in the timeline). A final is matched to the clip it overlaps most; when the VAD
  splits a clip, the last final counts and the texts are joined. p50 / p95 / max over every
  utterance of every stream. The Silero VAD ends an utterance after 0.5 s of quiet (counted from
  where its probability drops, which can be a little before the clip's last sample), so about
  0.4-0.6 s is the floor for both systems.
- **missed**: utterances with no final; **extra finals**: finals overlapping no clip (words
  "heard" in silence). **partial lag**: arrival − when the last audio the partial covers was
  spoken. **decodes / audio s**: Whisper decodes per second of audio, all streams.
  **s / decode**: mean wall time of one decode call, waiting for the (single) CTranslate2 worker
  included.
- **WER**: `asrhub.testing.wer` of each final against its MANIFEST transcript, weighted by words.
- **1-stream WER, same text** (`--stop-each`): before the sweep, one stream plays every clip once
  in real time; each clip's final text alone gives the WER the same utterances have at 1 stream,
  and *same text* counts the finals that are word for word (normalised) what their clip got alone
  (load, batching and timing must not change text).
- **loop lag**: `LoopLagMonitor` (50 ms sleeps) over the phase. **CPU s / audio s**: the process's
  user + system CPU time over the phase / audio seconds of all streams (2 cores = 2 CPU s per s).
- **backlog**: StreamPump's queued + in-flight audio, the mean over streams sampled every 0.2 s:
  its mean over the first and the last third of the phase, and the largest of any stream.
- **keeps up**: final p95 ≤ 1.0 s, no utterance missed, backlog of the last third at most 0.5 s
  above the first third's.

Targets (issue 14): ≥ 16 streams on tiny.en and ≥ 8 on base with stop → final p95 ≤ 1.0 s (`--stop-each`) and the 1-stream WER; loop lag p99 ≤ 10 ms.

"""


def write_results(path: Path, info: RunInfo) -> None:
    """Regenerate the file's header; replace this model's section (or add it after the other
    models'); keep every other section (hand-written notes included) as it is."""
    old = path.read_text() if path.exists() else ""
    sections = [m.group(0).rstrip() + "\n" for m in re.finditer(r"^## .*?(?=^## |\Z)", old, re.M | re.S)]
    title = f"## Whisper {info.model}\n"
    new = section(info)
    models = [s for s in sections if s.startswith("## Whisper ")]
    others = [s for s in sections if not s.startswith("## Whisper ")]
    if any(s.startswith(title) for s in models):
        models = [new if s.startswith(title) else s for s in models]
    else:
        models.append(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FILE_HEADER + "\n".join(models + others))


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en", help="tiny.en, base or a CTranslate2 dir")
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--sweep", default="", help="stream counts, e.g. 2,4,6,8 (overrides --streams)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per stream")
    parser.add_argument("--systems", default="hub,baseline", help="hub, baseline or both")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "concurrency.md"),
                        help="results file: this model's section is replaced or added; '-' = none")
    parser.add_argument("--state-dir", default=str(Path(tempfile.gettempdir()) / "asrhub-bench-state"),
                        help="hub state dir (where 'base' is assembled once)")
    parser.add_argument("--gil-switch-ms", type=float, default=1.0,
                        help="sys.setswitchinterval, as [server] gil_switch_interval_ms")
    parser.add_argument("--verbose", action="store_true", help="print every utterance")
    parser.add_argument("--stop-each", action="store_true",
                        help="a session per sentence, stop right after its last word")
    parser.add_argument("--workers", type=int, default=0,
                        help="[executor] workers (default: the hub's default)")
    parser.add_argument("--whisper", default="",
                        help="extra [engines.whisper] settings, e.g. max_batch=1,adaptive_window=false")
    args = parser.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.whisper = {k.strip(): _value(v.strip()) for k, v in
                    (item.split("=", 1) for item in args.whisper.split(",") if item.strip())}
    counts = [int(n) for n in args.sweep.split(",") if n.strip()] if args.sweep else [args.streams]
    label = args.model + (", stop after each sentence" if args.stop_each else "") + "".join(
        f", {k} = {v}" for k, v in args.whisper.items())
    info = RunInfo(label, ".venv/bin/python " + shlex.join(sys.argv),
                   datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), os.getloadavg())
    print(f"model {args.model}, {args.seconds:.0f} s per stream, streams {counts}, "
          f"load average {info.load_before[0]:.2f}", flush=True)
    print(HEADER)
    asyncio.run(measure(args, counts, info))
    info.load_after = os.getloadavg()
    print(f"load average after: {info.load_after[0]:.2f}")
    if args.out and args.out != "-":
        write_results(Path(args.out), info)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
