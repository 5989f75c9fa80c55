"""One Wyoming connection: an explicit state machine over the package's events. No sockets.

::

    IDLE --audio-start--> AUDIO --audio-stop--> FINISHING --transcript sent--> DONE (closed)
    IDLE: describe → info, ping → pong, select-program, transcribe {name, language, context}

Recognition is live: from ``audio-start`` on, audio goes through the hub's audio edge (any rate,
width and channel count → mono float32 16 kHz) into the shared engine's stream
(``open_stream(language=, vad=)``, driven by :class:`~asrhub.streaming.StreamPump`), so each
utterance is recognised while the user is still speaking and, at ``audio-stop``, only what
remains is decoded. Like the reference server (wyoming-faster-whisper), a connection carries
one transcription: after the transcript the server closes it.

Streaming transcripts (the protocol's ``transcript-start`` / ``transcript-chunk`` /
``transcript-stop``): the chunks concatenate to the transcript's text, so a chunk carries only
text that will not change: an utterance, sent as soon as the recogniser finishes it (at a
pause, before ``audio-stop``), then the rest after ``audio-stop``. Hypotheses that may still
change have no event in Wyoming, so a stream that can skip the decodes making them does
(Whisper's ``partials = False``); the decode at a pause stays. The transcript follows,
then ``transcript-stop``. Every client gets them unless the listener's
``transcript_streaming`` is off; a client decides for itself with ``transcribe``'s
``context: {"transcript_streaming": true|false}``. Clients that do not know these events skip
them: every Wyoming client reads until the ``transcript``.

Errors: a malformed or oversized event (the core reads it through :func:`messages.read_event`),
audio before ``audio-start``, an unusable audio format, an unknown model, a refused language
or a failing engine end the connection with an ``error`` event {text, code}; unknown event
types are ignored, as the protocol asks.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Describe, SelectProgram
from wyoming.ping import Ping, Pong

from asrhub.audio import AudioError, PcmStream
from asrhub.engine import SAMPLE_RATE, Audio, EngineError, Hypothesis
from asrhub.executor import ExecutorBusy
from asrhub.protocol import Channel, CloseInfo, ProtocolError, Session
from asrhub.streaming import BacklogFull, StreamPump
from asrhub.text import join_texts

from . import messages as m
from .catalog import Catalog, SpeakerMatch
from .settings import WyomingSettings

log = structlog.get_logger("asrhub.wyoming")


class State(enum.Enum):
    IDLE = "idle"  # connected: describe, ping, select-program, transcribe
    AUDIO = "audio"  # audio-start received: audio flows into the recogniser
    FINISHING = "finishing"  # audio-stop received: the rest is recognised
    DONE = "done"  # the transcript was sent; the connection is closing


def fatal(code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message, fatal=True)


def engine_failure(exc: Exception) -> ProtocolError:
    """The recogniser failed on this request's audio (busy, or an engine error)."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, ExecutorBusy):
        return fatal(m.SERVER_BUSY, "server busy: inference queue full, try again later")
    log.error("recognition_failed", error=f"{exc.__class__.__name__}: {exc}")
    return fatal(m.ENGINE_ERROR, f"recognition failed: {exc.__class__.__name__}")


class WyomingSession(Session):
    def __init__(self, channel: Channel, catalog: Catalog, settings: WyomingSettings, *,
                 observe_final_latency: Callable[[float], None] | None = None) -> None:
        self.channel = channel
        self.catalog = catalog
        self.settings = settings
        self._observe_final_latency = observe_final_latency
        self._loop = asyncio.get_running_loop()
        self._interval = max(1, int(settings.feed_interval_s * SAMPLE_RATE))
        self._speaker_max = int(settings.speaker_max_s * SAMPLE_RATE)

        self.state = State.IDLE
        self.program: str | None = None  # chosen with select-program
        self.request: Transcribe | None = None
        self.engine: str | None = None
        self.language: str | None = None
        self.streaming = False
        self.input_format: m.AudioFormat | None = None
        self.speaker: SpeakerMatch | None = None
        self.chunks_sent = 0
        self.partials = 0
        self.ignored = 0
        self.final_latency: float | None = None

        self._pcm: PcmStream | None = None
        self._pump: StreamPump | None = None
        self._pending: list[Audio] = []
        self._pending_len = 0
        self._speaker_audio: list[Audio] = []
        self._speaker_len = 0
        self._finished: list[str] = []
        self._streamed = ""  # text the transcript-chunks carried so far
        self._finishing: asyncio.Task | None = None
        self._speaker_job: asyncio.Task | None = None

    # ------------------------------------------------------------------ events

    async def on_message(self, message: Any) -> None:
        event: Event = message
        kind = event.type
        if Describe.is_type(kind):
            self._send(await self.catalog.info())
        elif Ping.is_type(kind):
            text = event.data.get("text")
            self._send(Pong(text=text if isinstance(text, str) else None))
        elif SelectProgram.is_type(kind):
            self._expect(State.IDLE, kind)
            self.program = self.catalog.resolve(m.parse_select_program(event).name)
        elif Transcribe.is_type(kind):
            self._expect(State.IDLE, kind)
            request = m.parse_transcribe(event)
            self.catalog.resolve(request.name or self.program)  # an unknown name fails now
            self.request = request
        elif AudioStart.is_type(kind):
            self._expect(State.IDLE, kind)
            await self._start(m.parse_audio_start(event))
        elif AudioChunk.is_type(kind):
            self._expect_audio(kind)
            await self._accept(m.parse_audio_chunk(event))
        elif AudioStop.is_type(kind):
            self._expect_audio(kind)
            await self._stop()
        else:  # "Servers are expected to drop unrecognized events"
            self.ignored += 1
            log.debug("event_ignored", type=kind[:64])

    async def on_close(self, info: CloseInfo) -> None:
        if info.shutdown and self.state is State.AUDIO:
            # Server shutdown while audio flows: the transcript of what was received.
            self._begin_finishing()
        task = self._finishing
        if task is not None and not task.done():
            if info.shutdown:
                try:
                    await task
                except Exception as exc:  # noqa: BLE001 - shutting down; nothing left to tell
                    log.warning("final_transcript_failed", error=repr(exc))
            else:
                task.cancel()
        await self._release()

    def summary(self) -> dict[str, Any]:
        fmt = self.input_format
        return {"engine": self.engine, "language": self.language, "state": self.state.value,
                "streaming": self.streaming, "chunks": self.chunks_sent,
                "partials": self.partials, "ignored_events": self.ignored,
                "format": f"{fmt.rate}/{fmt.width}/{fmt.channels}" if fmt else None,
                "final_latency_s": (round(self.final_latency, 3)
                                    if self.final_latency is not None else None),
                **({"speaker": self.speaker.speaker_id} if self.speaker else {})}

    # ------------------------------------------------------------------ transitions

    def _expect(self, state: State, kind: str) -> None:
        if self.state is not state:
            raise fatal(m.UNEXPECTED_EVENT, f"{kind} is not expected while {self.state.value} "
                        "(one transcription per connection: transcribe, audio-start, "
                        "audio-chunk..., audio-stop)")

    def _expect_audio(self, kind: str) -> None:
        if self.state is State.IDLE:
            raise fatal(m.AUDIO_NOT_STARTED, f"{kind} before audio-start")
        if self.state is not State.AUDIO:
            raise fatal(m.UNEXPECTED_EVENT, f"{kind} after audio-stop")

    async def _start(self, start: AudioStart) -> None:
        request = self.request
        self.engine = self.catalog.resolve((request.name if request else None) or self.program)
        requested = request.language if request is not None else None
        self.language = requested or self.settings.language or None
        self.streaming = m.wants_streaming(request, self.settings.transcript_streaming)
        self._set_format(m.AudioFormat(start.rate, start.width, start.channels))
        try:
            stream = await self.catalog.open_stream(self.engine, self.language)
        except ExecutorBusy:
            raise fatal(m.SERVER_BUSY, "server busy: inference queue full, try again later") from None
        except EngineError as exc:
            raise fatal(m.ENGINE_ERROR, str(exc)) from None
        if hasattr(stream, "partials"):
            # Wyoming has no event for a hypothesis that may still change, so the decodes that
            # only make one are skipped; a pause still decodes its utterance at once (what
            # becomes the transcript-chunk and, usually, the final).
            stream.partials = False
        if self.channel.closed:
            return
        backlog = self.settings.max_backlog_s * 1.5 + 5 * self.settings.feed_interval_s
        self._pump = StreamPump(self.catalog.hub.executor, stream, self._on_hypotheses,
                                engine=self.engine, max_backlog_s=backlog)
        self.state = State.AUDIO
        log.debug("audio_started", engine=self.engine, language=self.language,
                  rate=start.rate, width=start.width, channels=start.channels)
        if self.streaming:
            self._send(TranscriptStart(language=self.language))

    def _set_format(self, fmt: m.AudioFormat) -> None:
        if self._pcm is not None:  # a chunk in another format: finish the old converter
            self._queue(self._pcm.flush())
        try:
            self._pcm = PcmStream(fmt.rate, fmt.width, fmt.channels)
        except AudioError as exc:
            raise fatal(m.UNSUPPORTED_AUDIO, str(exc)) from None
        self.input_format = fmt

    async def _accept(self, chunk: AudioChunk) -> None:
        fmt = self.input_format
        if fmt is None or (chunk.rate, chunk.width, chunk.channels) != (fmt.rate, fmt.width, fmt.channels):
            self._set_format(m.AudioFormat(chunk.rate, chunk.width, chunk.channels))
        assert self._pcm is not None
        self._queue(self._pcm.convert(chunk.audio))
        await self._wait_for_room()

    async def _stop(self) -> None:
        self._begin_finishing()
        assert self._finishing is not None
        # Shielded: a shutdown that cancels the receive loop lets the transcript finish
        # (on_close waits for it); calls on one stream must never overlap or be abandoned.
        await asyncio.shield(self._finishing)

    def _begin_finishing(self) -> None:
        self.state = State.FINISHING
        self._finishing = self._loop.create_task(self._transcript(time.perf_counter()),
                                                 name=f"wyoming-final-{self.channel.conn_id}")

    async def _transcript(self, stopped_at: float) -> None:
        pump = self._pump
        assert pump is not None and self._pcm is not None
        self._queue(self._pcm.flush())
        self._feed(force=True)
        speaker_job = self._speaker_job = self._identify_speaker()
        try:
            await pump.finish()
        except Exception as exc:
            if speaker_job is not None:
                speaker_job.cancel()
            raise engine_failure(exc) from None
        context: dict[str, Any] | None = None
        if speaker_job is not None:
            try:
                self.speaker = await speaker_job
            except Exception as exc:  # noqa: BLE001 - the transcript goes out without it
                log.warning("speaker_identification_failed", error=repr(exc))
            context = {"speaker": self.speaker.to_dict() if self.speaker else None}
        text = join_texts(self._finished)
        self._send(Transcript(text=text, language=self.language, context=context))
        if self.streaming:
            self._send(TranscriptStop())
        self.final_latency = time.perf_counter() - stopped_at
        if self._observe_final_latency is not None:
            self._observe_final_latency(self.final_latency)
        self.state = State.DONE
        self.channel.close_soon(reason="transcript sent")

    # ------------------------------------------------------------------ audio

    def _queue(self, pcm: Audio) -> None:
        if not len(pcm):
            return
        self._pending.append(pcm)
        self._pending_len += len(pcm)
        if self.settings.identify_speakers and self._speaker_len < self._speaker_max:
            keep = pcm[:self._speaker_max - self._speaker_len]
            self._speaker_audio.append(keep)
            self._speaker_len += len(keep)
        if self._pending_len >= self._interval:
            self._feed()

    def _feed(self, force: bool = False) -> None:
        if not self._pending or self._pump is None or (not force and self._pending_len < self._interval):
            return
        pcm = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_len = [], 0
        try:
            self._pump.feed(pcm)
        except BacklogFull as exc:
            raise fatal(m.BACKLOG_FULL, f"audio dropped: {exc}") from None
        except Exception as exc:  # the engine failed on earlier audio
            raise engine_failure(exc) from None

    async def _wait_for_room(self) -> None:
        """Backpressure: stop reading the socket while too much audio waits for the engine."""
        pump = self._pump
        while pump is not None and pump.backlog_seconds >= self.settings.max_backlog_s:
            try:
                await pump.drain()  # re-raises the engine's failure
            except Exception as exc:
                raise engine_failure(exc) from None

    async def _on_hypotheses(self, hyps: list[Hypothesis]) -> None:
        for hyp in hyps:
            if hyp.language and not self.language:
                self.language = hyp.language
            if not hyp.is_final:
                self.partials += 1
                continue
            text = hyp.text.strip()
            if text:
                self._finished.append(text)
        if self.streaming and self.state in (State.AUDIO, State.FINISHING):
            full = join_texts(self._finished)
            if len(full) > len(self._streamed) and full.startswith(self._streamed):
                self._send(TranscriptChunk(text=full[len(self._streamed):]))
                self._streamed = full
                self.chunks_sent += 1

    def _identify_speaker(self) -> asyncio.Task | None:
        if not self.settings.identify_speakers:
            return None
        audio = (np.concatenate(self._speaker_audio) if self._speaker_audio
                 else np.zeros(0, np.float32))
        self._speaker_audio, self._speaker_len = [], 0
        return self._loop.create_task(self.catalog.identify(audio))

    # ------------------------------------------------------------------ plumbing

    def _send(self, message: Any) -> None:
        self.channel.send_bytes(m.frame(message.event()))

    async def _release(self) -> None:
        if self._speaker_job is not None and not self._speaker_job.done():
            self._speaker_job.cancel()
        pump, self._pump = self._pump, None
        if pump is not None:
            await pump.close()
            self.audio_seconds = pump.audio_seconds
            self.processing_seconds = pump.processing_seconds
        self._pending, self._pending_len = [], 0
        self._speaker_audio, self._speaker_len = [], 0
