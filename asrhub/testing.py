"""Helpers for tests of asrhub and of its plugins (no mocks: real servers on loopback)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from asrhub.config import parse_config
from asrhub.hookspecs import hookimpl
from asrhub.hub import Hub
from asrhub.plugins import make_plugin_manager
from asrhub.protocol import (
    ANONYMOUS,
    Channel,
    CloseInfo,
    ErrorCodes,
    ListenerSettings,
    ProtocolContext,
    ProtocolError,
    Session,
    WebSocketRoute,
)
from asrhub.specs import ProtocolSpec


def testdata_dir() -> Path:
    """``shared/testdata`` beside the checkout (CI), or $ASRHUB_TESTDATA, or /work/shared."""
    candidates = [os.environ.get("ASRHUB_TESTDATA", ""),
                  str(Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"),
                  "/work/shared/testdata"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("test audio not found: set ASRHUB_TESTDATA to shared/testdata")


# Not a test, though its name starts with "test": pytest would collect it where it is imported.
testdata_dir.__test__ = False  # type: ignore[attr-defined]


def normalize_english(text: str) -> str:
    """Lower-case, digits spelt out, punctuation stripped: Whisper writes "10 of clubs"."""
    import re

    from num2words import num2words

    text = text.lower().replace("-", " ")
    text = re.sub(r"\d+", lambda m: " " + num2words(int(m.group())) + " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text.replace(",", " "))
    return " ".join(text.replace("'", "").split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after :func:`normalize_english` (jiwer does the alignment)."""
    import jiwer

    ref, hyp = normalize_english(reference), normalize_english(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or "<empty>"))


def cer_chinese(reference: str, hypothesis: str) -> float:
    """Character error rate on CJK characters only (punctuation and spaces removed)."""
    import re

    import jiwer

    keep = lambda s: "".join(re.findall(r"[\u4e00-\u9fff]", s))  # noqa: E731
    return float(jiwer.cer(keep(reference), keep(hypothesis) or "-"))


def manifest() -> dict[str, dict[str, str]]:
    """``MANIFEST.tsv`` rows by file name (relative to testdata)."""
    import csv

    with open(testdata_dir() / "MANIFEST.tsv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_hub(sections: dict[str, Any] | None = None, *, only: Iterable[str] | None = None,
             extra_plugins: Iterable[object] = (), fake_engines: bool = False) -> Hub:
    """A hub on 127.0.0.1. With ``only``, every other protocol is disabled and the named ones
    get free ports (unless their section sets one). ``fake_engines``: the deterministic
    :class:`FakeASR`/:class:`FakeVAD` are the hub's ASR and VAD engines (no model loads)."""
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in (sections or {}).items()}
    if fake_engines:
        extra_plugins = [*extra_plugins, FakeEngines()]
        engines = sections.setdefault("engines", {})
        engines.setdefault("asr", "fake")
        engines.setdefault("vad", "fake_vad")
    server = {"host": "127.0.0.1", "preload": False, **sections.pop("server", {})}
    if not server.get("state_dir"):
        # Never the user's real state (voiceprints, file tasks): a fresh directory per hub.
        import atexit
        import shutil
        import tempfile

        server["state_dir"] = tempfile.mkdtemp(prefix="asrhub-test-")
        atexit.register(shutil.rmtree, server["state_dir"], ignore_errors=True)
    plugins = list(extra_plugins)
    if only is not None:
        only = set(only)
        probe = Hub(parse_config({"server": server}), make_plugin_manager(plugins))
        protocols = {k: dict(v) for k, v in sections.get("protocols", {}).items()}
        for name, spec in probe.protocols.items():
            section = protocols.setdefault(name, {})
            if name in only:
                section.setdefault("enabled", True)
                section.setdefault("port", free_port())
                for extra in spec.extra_ports:
                    section.setdefault(extra, {}).setdefault("port", free_port())
            else:
                section["enabled"] = False
        sections["protocols"] = protocols
    return Hub(parse_config({"server": server, **sections}), make_plugin_manager(plugins))


@contextlib.asynccontextmanager
async def running_server(hub: Hub, *, preload: bool = False) -> AsyncIterator[Any]:
    """Start every enabled listener of ``hub``; yields the Server (``server.ports[name]``)."""
    from asrhub.server import Server

    server = Server(hub)
    await server.start(preload=preload)
    try:
        yield server
    finally:
        await server.stop()


@dataclass(frozen=True)
class EchoSettings(ListenerSettings):
    greeting: str = "hello"


ECHO_CODES = ErrorCodes(bad_message="bad_message", too_big="too_big", busy="busy",
                        internal="internal", too_many_connections="too_many_connections")


class EchoSession(Session):
    """Greets, echoes text, counts binary bytes as 16 kHz int16 audio; ``fail`` raises inside
    the hub, ``bad`` raises a protocol error (for the core's own tests)."""

    def __init__(self, channel: Channel, settings: EchoSettings) -> None:
        self.channel = channel
        self.settings = settings
        self.closed_with: CloseInfo | None = None

    async def on_open(self) -> None:
        self.channel.send_json({"type": "hello", "greeting": self.settings.greeting})

    async def on_text(self, text: str) -> None:
        if text == "fail":
            raise RuntimeError("boom")
        if text == "bad":
            raise ProtocolError("bad_message", "you asked for it")
        self.channel.send_json({"echo": text})

    async def on_binary(self, data: bytes) -> None:
        self.audio_seconds += len(data) / 32000

    async def on_close(self, info: CloseInfo) -> None:
        self.closed_with = info
        if info.shutdown:
            self.channel.send_json({"type": "bye", "audio_s": self.audio_seconds})


def _echo_setup(ctx: ProtocolContext) -> None:
    from asrhub.appkeys import HUB_KEY

    hub = ctx.hub

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"hub": request.app[HUB_KEY] is hub})

    ctx.websocket(WebSocketRoute(
        path="/ws", codes=ECHO_CODES,
        open_session=lambda channel, request: EchoSession(channel, ctx.settings),
        error_message=lambda err: {"type": "error", "code": err.code, "message": err.message}))
    assert ctx.app is not None
    ctx.app.router.add_get("/", info)


class EchoPlugin:
    """A minimal protocol (no models) for testing the core itself."""

    @hookimpl
    def asrhub_register_protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec("echo", 1, "echo for tests", _echo_setup, EchoSettings)]


# ----------------------------------------------------------------------------- fake engines
#
# One deterministic stand-in for the engines, for every plugin's socket-free session tests and
# for server tests that check the protocol rather than recognition (limits, bad input). They
# recognise no speech: the ASR counts audio, the VAD measures energy. Tests that assert text use
# the real engines on real recordings.


class FakeASRStream:
    """An :class:`~asrhub.engine.ASRStream` that counts: each full ``word_s`` of audio received
    is one word, ``w1``, ``w2``, ... (numbered from the start of the stream, from 1 again after
    :meth:`reset`). An utterance ends after ``utterance_words`` words (0 = never) or at a VAD
    "end" event when the stream was opened with a VAD stream: ``accept`` returns it as a final
    hypothesis, then a partial with the words of the utterance in progress, if it has any.
    ``finish`` returns the utterance in progress as final. Hypotheses carry ``confidence``.

    Failure and load: ``delay_s`` sleeps in every ``accept`` (a slow engine); from the
    ``fail_from_call``-th ``accept`` on (1-based, 0 = never) it raises ``EngineError("engine
    exploded")``. Records: ``calls``, ``accepted`` (samples per call), ``threads`` (names of
    the threads that called), ``finished``, ``reset_calls``, ``language``.
    """

    def __init__(self, *, word_s: float = 0.5, utterance_words: int = 3, confidence: float = 0.8,
                 delay_s: float = 0.0, fail_from_call: int = 0, language: str | None = None,
                 vad: Any = None) -> None:
        self.word_samples = max(1, int(word_s * 16000))
        self.utterance_words = utterance_words
        self.confidence = confidence
        self.delay_s = delay_s
        self.fail_from_call = fail_from_call
        self.language = language
        self.vad = vad
        self.calls = 0
        self.accepted: list[int] = []
        self.threads: set[str] = set()
        self.finished = False
        self.reset_calls = 0
        self.samples = 0
        self.utterance = 1
        self.words: list[str] = []
        self._utterance_start = 0

    def accept(self, pcm: Any) -> list[Any]:
        import threading
        import time

        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_from_call and self.calls >= self.fail_from_call:
            from asrhub.engine import EngineError

            raise EngineError("engine exploded")
        self.accepted.append(len(pcm))
        out = []
        ends = [e.sample for e in (self.vad.accept(pcm) if self.vad is not None else [])
                if e.kind == "end"]
        before = self.samples // self.word_samples
        self.samples += len(pcm)
        for n in range(before + 1, self.samples // self.word_samples + 1):
            self.words.append(f"w{n}")
            if len(self.words) == self.utterance_words:
                out.append(self._final(n * self.word_samples))
        if ends and self.words:
            out.append(self._final(self.samples))
        if self.words:
            out.append(self._hypothesis(False))
        return out

    def finish(self) -> list[Any]:
        self.finished = True
        if self.vad is not None:
            self.vad.finish()
        return [self._final(self.samples)] if self.words else []

    def reset(self) -> None:
        self.reset_calls += 1
        self.samples = 0
        self.words = []
        self._utterance_start = 0
        if self.vad is not None:
            self.vad.reset()

    def _final(self, end: int) -> Any:
        hyp = self._hypothesis(True, end)
        self.words = []
        self.utterance += 1
        self._utterance_start = end
        return hyp

    def _hypothesis(self, final: bool, end: int | None = None) -> Any:
        from asrhub.engine import Hypothesis

        end = self.samples if end is None else end
        return Hypothesis(" ".join(self.words), final, self.utterance,
                          self._utterance_start / 16000, end / 16000,
                          confidence=self.confidence, language=self.language)


class FakeASR:
    """An :class:`~asrhub.engine.ASREngine` whose streams are :class:`FakeASRStream` s (made
    with ``stream_options``; ``streams`` lists them) and whose ``transcribe`` counts the same
    way (a segment per utterance)."""

    name = "fake"
    model_name = "fake"

    def __init__(self, **stream_options: Any) -> None:
        self.stream_options = stream_options
        self.streams: list[FakeASRStream] = []

    def open_stream(self, *, language: str | None = None, vad: Any = None) -> FakeASRStream:
        stream = FakeASRStream(**{"language": language, "vad": vad, **self.stream_options})
        self.streams.append(stream)
        return stream

    def transcribe(self, audio: Any, *, language: str | None = None, word_timestamps: bool = False,
                   progress: Any = None) -> Any:
        from asrhub.engine import Segment, Transcript

        stream = FakeASRStream(**{**self.stream_options, "delay_s": 0.0, "fail_from_call": 0,
                                  "language": language})
        hyps = [h for h in [*stream.accept(audio), *stream.finish()] if h.is_final]
        if progress is not None:
            progress(1.0)
        segments = [Segment(h.start, h.end, h.text, confidence=h.confidence) for h in hyps]
        return Transcript(" ".join(h.text for h in hyps), language, len(audio) / 16000, segments)

    def close(self) -> None:
        pass


class ScriptedVADStream:
    """A :class:`~asrhub.engine.VADStream` that reports given speech regions (start, end in
    samples) the way a streaming VAD does: a start once the speech has lasted ``start_delay``
    samples (shorter regions are never reported), an end ``end_delay`` after the speech
    stopped. ``finish()`` reports what is still due (``flush_all``: every region left, heard
    or not, as a VAD that closes open speech at the end of input)."""

    def __init__(self, regions: list[tuple[int, int]], start_delay: int = 0, end_delay: int = 0,
                 *, flush_all: bool = True) -> None:
        self.regions = [(s, e) for s, e in regions if e - s >= start_delay]
        self.start_delay = start_delay
        self.end_delay = end_delay
        self.flush_all = flush_all
        self.reset()

    def reset(self) -> None:
        self.pos = 0
        self.sent: set[tuple[str, int]] = set()

    def _due(self, until: int) -> list:
        from asrhub.engine import VADEvent

        out = []
        for start, end in self.regions:
            if ("start", start) not in self.sent and start + self.start_delay <= until:
                self.sent.add(("start", start))
                out.append(VADEvent("start", start))
            if ("end", end) not in self.sent and end + self.end_delay <= until:
                self.sent.add(("end", end))
                out.append(VADEvent("end", end))
        return out

    def accept(self, pcm: Any) -> list:
        self.pos += len(pcm)
        return self._due(self.pos)

    def finish(self) -> list:
        return self._due(10 ** 12 if self.flush_all else self.pos)


class FakeVADStream:
    """A :class:`~asrhub.engine.VADStream` on energy: a 512-sample frame is speech when its RMS
    is at least ``threshold``. "start" (at the first speech frame) once ``start_frames`` speech
    frames followed each other; "end" (at the first silent frame) once ``end_frames`` silent
    frames did. ``silence_since`` is the start of the pause in progress inside speech."""

    FRAME = 512

    def __init__(self, *, threshold: float = 0.01, start_frames: int = 3, end_frames: int = 10) -> None:
        self.threshold = threshold
        self.start_frames = start_frames
        self.end_frames = end_frames
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self._carry = np.zeros(0, np.float32)
        self.pos = 0  # samples judged so far
        self.in_speech = False
        self._run = 0
        self._run_start = 0
        self.silence_since: int | None = None

    def accept(self, pcm: Any) -> list[Any]:
        import numpy as np

        from asrhub.engine import VADEvent

        data = np.concatenate([self._carry, np.asarray(pcm, np.float32)])
        whole = len(data) // self.FRAME * self.FRAME
        self._carry = data[whole:]
        events = []
        for begin in range(0, whole, self.FRAME):
            frame = data[begin:begin + self.FRAME]
            speech = float(np.sqrt(np.mean(frame * frame))) >= self.threshold
            if speech != self.in_speech:  # a frame against the current state
                if self._run == 0:
                    self._run_start = self.pos
                self._run += 1
                if not self.in_speech:
                    if self._run >= self.start_frames:
                        self.in_speech, self._run = True, 0
                        events.append(VADEvent("start", self._run_start))
                else:
                    self.silence_since = self._run_start
                    if self._run >= self.end_frames:
                        self.in_speech, self._run, self.silence_since = False, 0, None
                        events.append(VADEvent("end", self._run_start))
            else:
                self._run = 0
                self.silence_since = None
            self.pos += self.FRAME
        return events

    def finish(self) -> list[Any]:
        from asrhub.engine import VADEvent

        if not self.in_speech:
            return []
        end = self.silence_since if self.silence_since is not None else self.pos + len(self._carry)
        self.in_speech, self._run, self.silence_since = False, 0, None
        return [VADEvent("end", end)]


class FakeVAD:
    """A :class:`~asrhub.engine.VADEngine` of :class:`FakeVADStream` s."""

    name = "fake"

    def __init__(self, **stream_options: Any) -> None:
        self.stream_options = stream_options

    def open_stream(self) -> FakeVADStream:
        return FakeVADStream(**self.stream_options)

    def speech_regions(self, audio: Any) -> list[tuple[int, int]]:
        stream = self.open_stream()
        events = [*stream.accept(audio), *stream.finish()]
        regions, start = [], None
        for event in events:
            if event.kind == "start":
                start = event.sample
            elif start is not None:
                regions.append((start, event.sample))
                start = None
        return regions

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class FakeASRSettings:
    word_s: float = 0.5
    utterance_words: int = 3
    delay_s: float = 0.0


@dataclass(frozen=True)
class FakeVADSettings:
    threshold: float = 0.01


class FakeEngines:
    """Registers :class:`FakeASR` as the ASR engine ``fake`` and :class:`FakeVAD` as the VAD
    engine ``fake_vad`` (``[engines] asr = "fake"``, ``vad = "fake_vad"``; ``[engines.fake]``
    takes FakeASRSettings' keys, ``[engines.fake_vad]`` FakeVADSettings'). ``make_hub(...,
    fake_engines=True)`` registers them and selects them unless ``[engines]`` names others."""

    @hookimpl
    def asrhub_register_asr_engines(self) -> list[Any]:
        from asrhub.specs import EngineSpec

        return [EngineSpec("fake", "counts audio (tests)",
                           lambda s, hub: FakeASR(word_s=s.word_s, utterance_words=s.utterance_words,
                                                  delay_s=s.delay_s), FakeASRSettings)]

    @hookimpl
    def asrhub_register_vad_engines(self) -> list[Any]:
        from asrhub.specs import EngineSpec

        return [EngineSpec("fake_vad", "energy VAD (tests)",
                           lambda s, hub: FakeVAD(threshold=s.threshold), FakeVADSettings)]


# ----------------------------------------------------------------------------- sessions


class RecordingChannel:
    """A :class:`~asrhub.protocol.Channel` for socket-free session tests: what the session
    sends is kept in ``sent`` (JSON messages decoded back, so they are known to serialise;
    text and bytes as they are), error codes in ``errors``, a close in ``closed_with``.
    ``error_message`` is the protocol's envelope (its route's), as the core would apply it."""

    def __init__(self, error_message: Any = None, *, codes: ErrorCodes | None = None,
                 protocol: str = "test") -> None:
        import time

        self.error_message = error_message or (lambda err: {"type": "error", "code": err.code,
                                                            "message": err.message})
        self.codes = codes or ECHO_CODES
        self.protocol = protocol
        self.conn_id = f"{protocol}-test"
        self.peer = "127.0.0.1"
        self.credential = ANONYMOUS  # a test may set another (asrhub.protocol.Credential)
        self.opened = time.monotonic()
        self.sent: list[Any] = []
        self.errors: list[str | int] = []
        self.closed_with: tuple[int, str] | None = None
        self.close_reason = "client closed"
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    @property
    def errors_sent(self) -> int:
        return len(self.errors)

    def send_json(self, message: Any) -> None:
        import json

        from asrhub.protocol import dumps

        if not self.closed:
            self.sent.append(json.loads(dumps(message)))

    def send_text(self, text: str) -> None:
        if not self.closed:
            self.sent.append(text)

    def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            self.sent.append(bytes(data))

    def send_error(self, err: ProtocolError) -> None:
        self.count_error(err.code)
        envelope = self.error_message(err)
        if isinstance(envelope, bytes):
            self.send_bytes(envelope)
        elif isinstance(envelope, str):
            self.send_text(envelope)
        elif envelope is not None:
            self.send_json(envelope)
        if err.fatal:
            self.close_soon(err.close_code, err.message)

    def count_error(self, code: str | int) -> None:
        self.errors.append(code)

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)
            self.close_code = code
            if reason:
                self.close_reason = reason

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_soon(code, reason)

    async def flush(self, timeout: float = 10.0) -> None:
        pass

    # helpers for tests
    async def deliver(self, session: Session, message: str | bytes) -> None:
        """One client message to ``session`` as the kit's receive loop hands it over: text to
        ``on_text``, bytes to ``on_binary``; what it raises becomes the protocol's error
        message, mapped as the kit maps it (``codes``; a fatal error closes the channel)."""
        from asrhub.protocol import map_failure

        if self.closed:
            return
        try:
            if isinstance(message, str):
                await session.on_text(message)
            else:
                await session.on_binary(message)
        except Exception as exc:  # noqa: BLE001 - what the kit does with it
            self.send_error(map_failure(exc, self.codes))

    def types(self) -> list[Any]:
        return [m.get("type") if isinstance(m, dict) else type(m).__name__ for m in self.sent]

    def take(self) -> list[Any]:
        out, self.sent[:] = list(self.sent), []
        return out

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Until ``predicate(self.sent)`` holds (polls: no fixed sleeps); fails after ``timeout``."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        while not predicate(self.sent):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; sent so far: {self.sent!r}")
            await asyncio.sleep(0.005)


# English recordings with human (or grammar-checked) transcripts: a long file is built from them.
LONG_FILE_CLIPS = (
    "en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
    "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
    "en/pocketsphinx_librivox_ss01_0930.wav", "en/pocketsphinx_goforward.wav",
    "en/speechbrain_example1.wav", "en/speechbrain_spk1_snt1.wav", "en/speechbrain_spk1_snt3.wav",
)


def long_recording(path: Path, seconds: float, *, gap_s: float = 0.8, pause_s: float = 6.0) -> str:
    """Write a 16 kHz mono WAV of about ``seconds`` (at least one round of the clips): the
    :data:`LONG_FILE_CLIPS` in turn, ``gap_s`` of silence between clips and ``pause_s`` after
    each round; written a clip at a time (a 3-hour file never sits in memory). Returns the
    reference transcript of the whole file."""
    import numpy as np
    import soundfile as sf

    refs = manifest()
    clips = []
    for name in LONG_FILE_CLIPS:
        audio, rate = sf.read(str(testdata_dir() / name), dtype="float32", always_2d=False)
        assert rate == 16000 and audio.ndim == 1, name
        clips.append((audio, refs[name]["transcript"]))
    gap, pause = np.zeros(int(gap_s * 16000), np.float32), np.zeros(int(pause_s * 16000), np.float32)
    words: list[str] = []
    written = 0
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        while written < seconds * 16000 or not words:
            for audio, text in clips:
                out.write(audio)
                out.write(gap)
                written += len(audio) + len(gap)
                words.append(text)
            out.write(pause)
            written += len(pause)
    return " ".join(words)
