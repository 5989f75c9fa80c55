"""The streaming STT session: an explicit state machine, no sockets (a protocol-kit
:class:`~asrhub.protocol.Session`: it talks to the client only through its channel).

One :class:`StreamingSession` per connection; it runs any number of recognition sessions one
after another::

    IDLE --start / audio--> ACTIVE --stop / idle end / engine failure--> FINISHING --> ENDED
    ACTIVE --stop (webm/ogg, or no audio yet)--> STOPPING --grace over / start--> FINISHING
    ENDED --start--> ACTIVE          ENDED --audio (only after an idle end)--> ACTIVE
    any --disconnect--> CLOSED       any --server shutdown--> final for what was received

Incremental recognition: audio goes to the engine's VAD-segmented stream every
``feed_interval_s`` (0.25 s); the engine decides when to decode (Whisper: a partial at most
every ``[engines.whisper] partial_interval`` of new audio, 1 s by default, and the utterance as
soon as a pause follows it), and finished utterances are never decoded again, so the work per
update is bounded however long the session runs. The engine answers with hypotheses:
finished utterances (their text never changes) and a guess for the utterance in progress. A
``partial`` carries the finished utterances followed by the current guess; ``final`` carries
every utterance of the session.

Decisions the seed leaves open (documented in the README):

- ``stop`` → the remaining audio is recognised → ``final`` → ``session_ended``; audio after
  ``stop`` is an error until the next ``start``. Except within ``stop_grace_s`` of the stop
  of a webm/ogg session (or one with no audio yet): the seed's JavaScript client calls
  ``mediaRecorder.stop()`` and sends ``stop`` at once, so MediaRecorder's last chunk arrives
  after the stop; it goes into the same final (meanwhile the audio already received is being
  recognised). A ``start`` during the grace ends the session at once.
- A session that received audio and then none for ``idle_end_s`` ends by itself exactly as if
  stopped. The seed's asyncio client needs this: it only sends ``stop`` after its receive loop
  saw ``session_ended``. A ``stop`` arriving after such an idle end is answered with the same
  ``final`` and ``session_ended`` again (so a client waiting for them gets them), and audio
  arriving after it starts a new session (``session_started`` is sent).
- If recognition fails mid-session, the client gets an ``error``, then ``final`` (what was
  recognised so far) and ``session_ended``; more audio needs a new ``start``.
- Audio without ``start`` starts a session (``session_started`` is sent first).
- The first binary message of a session decides its format: a WebM/Ogg/WAV container if it
  starts with one's magic (decoded incrementally, see :mod:`asrhub.container_stream`),
  raw PCM int16 LE 16 kHz mono otherwise.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any

import structlog

from asrhub.audio import AudioError, pcm16le_to_float
from asrhub.container_stream import ContainerStream, sniff_container
from asrhub.engine import Audio, Hypothesis
from asrhub.executor import ExecutorBusy, ExecutorClosed
from asrhub.protocol import CloseInfo, ProtocolError, Session
from asrhub.streaming import BacklogFull, LiveRecognizer, StreamPump
from asrhub.text import join_texts

from . import messages as m
from .settings import StreamingSTTSettings

log = structlog.get_logger("asrhub.streaming_stt")


class State(enum.Enum):
    IDLE = "idle"  # connected, no session yet
    ACTIVE = "active"  # a session is receiving audio
    STOPPING = "stopping"  # stop received; late audio (the grace period) still joins the session
    FINISHING = "finishing"  # the remaining audio is being recognised
    ENDED = "ended"  # final and session_ended were sent
    CLOSED = "closed"  # the connection is gone


class EndReason(enum.Enum):
    STOP = "stop"
    IDLE = "idle"
    ERROR = "error"


class StreamingSession(Session):
    def __init__(
        self,
        channel,
        recognizer: LiveRecognizer,
        settings: StreamingSTTSettings,
        *,
        observe_final_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.channel = channel
        self.recognizer = recognizer
        self.settings = settings
        self._observe_final_latency = observe_final_latency
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()

        self.state = State.IDLE
        self.ended_by: EndReason | None = None
        self.input_format: str | None = None  # "pcm" or the container's demuxer
        self.sessions = 0
        self.audio_seconds = 0.0  # over every session of the connection
        self.processing_seconds = 0.0
        self.partials_sent = 0

        self._pump: StreamPump | None = None
        self._container: ContainerStream | None = None
        self._finished: list[str] = []
        self._current = ""
        self._last_partial = ""
        self._last_audio: float | None = None
        self._idle_task: asyncio.Task | None = None
        self._fail_task: asyncio.Task | None = None
        self._grace_task: asyncio.Task | None = None
        self._command_task: asyncio.Future | None = None
        self._stop_received = 0.0
        self._engine_failed = False
        self._last_final = ""
        self._refused_audio = False

    # ------------------------------------------------------------------ inputs

    def text(self) -> str:
        """Finished utterances, then the guess for the one in progress."""
        return join_texts([*self._finished, self._current])

    async def on_open(self) -> None:
        self.channel.send_json(m.connected())

    async def on_text(self, text: str) -> None:
        command = m.parse_command(text)  # a ProtocolError is answered by the kit
        # Shielded: a shutdown that stops reading mid-command lets it finish (a stop's final
        # goes out); on_close waits for it through the lock.
        self._command_task = asyncio.ensure_future(self._command(command))
        await asyncio.shield(self._command_task)

    async def _command(self, command: m.Command) -> None:
        async with self._lock:
            if self.state is State.CLOSED:
                return
            if isinstance(command, m.Start):
                if self.state is State.ACTIVE:
                    self._error(m.SESSION_ACTIVE, "a session is already running; send stop first")
                    return
                if self.state is State.STOPPING:  # no more grace: end the stopped one now
                    await self._end(EndReason.STOP)
                await self._begin(command.language)
            elif self.state is State.ACTIVE:
                self._stop_received = self._loop.time()
                if self._grace_applies():
                    self.state = State.STOPPING
                    self._pump.flush()  # recognise what we have while the grace runs
                    self._grace_task = self._loop.create_task(self._end_after_grace(),
                                                              name="streaming-stt-grace")
                else:
                    await self._end(EndReason.STOP)
            elif self.state is State.STOPPING:
                pass  # a second stop: the final is on its way
            elif self.state is State.ENDED and self.ended_by in (EndReason.IDLE, EndReason.ERROR):
                # The session already ended by itself: answer the stop as if it ended now.
                self.channel.send_json(m.final(self._last_final))
                self.channel.send_json(m.session_ended())
                self.ended_by = EndReason.STOP
            else:
                self._error(m.NO_SESSION, "no session is running (send start, then audio)")

    async def on_binary(self, data: bytes) -> None:
        async with self._lock:
            if self.state in (State.CLOSED, State.FINISHING):
                return
            if self.state is State.ENDED and self.ended_by is not EndReason.IDLE:
                if self._refused_audio:  # told once per ended session, not once per frame
                    return
                self._refused_audio = True
                why = "was stopped" if self.ended_by is EndReason.STOP else "ended after an error"
                self._error(m.AUDIO_AFTER_STOP,
                            f"the session {why}; send {{\"command\": \"start\"}} to begin a new one")
                return
            if self.state not in (State.ACTIVE, State.STOPPING):
                problem = _first_frame_problem(data)
                if problem is not None:
                    self._error(*problem)
                    return
                if not await self._begin(None):
                    return
            await self._accept(data)

    async def on_close(self, info: CloseInfo) -> None:
        """The connection ends. At server shutdown a session in progress gets its final (for
        the audio already received) and session_ended first."""
        if self._command_task is not None and not self._command_task.done():
            try:  # a command in progress when reading stopped (a stop: its final goes out)
                await self._command_task
            except Exception:  # noqa: BLE001 - answered by the kit, or moot now
                pass
        if info.shutdown:
            async with self._lock:  # a grace or idle end already finishing keeps it
                if self.state in (State.ACTIVE, State.STOPPING) and self._pump is not None:
                    await self._end(EndReason.STOP)
        await self.close()

    def summary(self) -> dict[str, Any]:
        return {"recognition_sessions": self.sessions, "partials": self.partials_sent,
                "format": self.input_format}

    async def close(self) -> None:
        """The connection is gone: stop everything this session holds."""
        self.state = State.CLOSED
        for task in (self._idle_task, self._fail_task, self._grace_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                    pass
        await self._release()

    # ------------------------------------------------------------------ session lifecycle

    async def _begin(self, language: str | None) -> bool:
        language = language or self.settings.language or None
        backlog = self.settings.max_backlog_s * 1.5 + 5 * self.settings.feed_interval_s
        try:
            pump = await self.recognizer.open(self._on_hypotheses, language=language,
                                              max_backlog_s=backlog, on_error=self._on_pump_error,
                                              min_chunk_s=self.settings.feed_interval_s)
        except ExecutorBusy:
            self._error(m.SERVER_BUSY, "the server is busy; try again shortly")
            return False
        except ExecutorClosed:
            raise  # shutting down: the kit answers and closes
        except Exception as exc:  # noqa: BLE001 - reported to the client
            log.exception("open_stream_failed")
            self._error(m.ENGINE_ERROR, f"the recogniser is not available: {exc}")
            return False
        if self.state is State.CLOSED:
            await pump.close()
            return False
        self._pump = pump
        self._finished, self._current, self._last_partial = [], "", ""
        self._last_audio = None
        self._engine_failed = False
        self.input_format = None
        self.ended_by = None
        self.state = State.ACTIVE
        self.sessions += 1
        log.debug("session_started", session=self.sessions, language=language)
        self.channel.send_json(m.session_started())
        if self.settings.idle_end_s > 0:
            self._idle_task = self._loop.create_task(self._watch_idle(), name="streaming-stt-idle")
        return True

    async def _end(self, reason: EndReason) -> None:
        """Recognise what remains, send final and session_ended. The lock is held."""
        assert self._pump is not None
        stopping = self.state is State.STOPPING
        self.state = State.FINISHING
        started = self._stop_received if stopping else self._loop.time()
        if self._idle_task is not None and self._idle_task is not asyncio.current_task():
            self._idle_task.cancel()
        self._idle_task = None
        self._cancel_grace()
        if self._container is not None:
            await self._container.finish()  # its last audio arrives through _on_pcm
        try:
            await self._pump.finish()  # hands over the audio still queued first
        except Exception as exc:  # noqa: BLE001 - the final still goes out with what we have
            self._report_engine_failure(exc)
        text = self.text()
        self.channel.send_json(m.final(text))
        self.channel.send_json(m.session_ended())
        if reason is EndReason.STOP and self._observe_final_latency is not None:
            self._observe_final_latency(self._loop.time() - started)
        log.debug("session_ended", session=self.sessions, reason=reason.value,
                  audio_s=round(self._pump.audio_seconds, 2), format=self.input_format)
        await self._release()
        self._last_final = text
        self._refused_audio = False
        self.ended_by = reason
        self.state = State.ENDED

    async def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._pump is not None:
            pump, self._pump = self._pump, None
            await pump.close()
            self.audio_seconds += pump.audio_seconds
            self.processing_seconds += pump.processing_seconds

    def _grace_applies(self) -> bool:
        """Late audio is expected from MediaRecorder (webm/ogg), and from a client whose
        recorder has not delivered its first chunk yet; raw PCM clients send before stop."""
        return self.settings.stop_grace_s > 0 and self.input_format != "pcm"

    async def _end_after_grace(self) -> None:
        await asyncio.sleep(self.settings.stop_grace_s)
        async with self._lock:
            if self.state is State.STOPPING and self._grace_task is asyncio.current_task():
                self._grace_task = None
                await self._end(EndReason.STOP)

    def _cancel_grace(self) -> None:
        task, self._grace_task = self._grace_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _watch_idle(self) -> None:
        idle = self.settings.idle_end_s
        while self.state is State.ACTIVE:
            last = self._last_audio
            remaining = idle if last is None else last + idle - self._loop.time()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            async with self._lock:
                last = self._last_audio
                if (self.state is State.ACTIVE and last is not None
                        and self._loop.time() - last >= idle):
                    log.debug("session_idle_end", idle_s=idle)
                    await self._end(EndReason.IDLE)
                    return

    # ------------------------------------------------------------------ audio

    async def _accept(self, data: bytes) -> None:
        if self.input_format is None:
            demuxer = sniff_container(data)
            if demuxer is not None:
                self._container = ContainerStream(
                    demuxer, self._on_pcm, on_error=self._on_decode_error, loop=self._loop,
                    max_pending_bytes=self.settings.max_container_bytes)
            self.input_format = demuxer or "pcm"
        if self._container is not None:
            try:
                self._container.feed(data)
            except AudioError as exc:
                if exc is self._container.error:
                    return  # the decoding failure was reported when it happened
                self._error(m.BACKLOG_FULL if exc.reason == "backlog_full" else m.INVALID_AUDIO, str(exc))
                return
        else:
            if sniff_container(data) is not None:
                self._error(m.NOT_AUDIO, "this session streams raw PCM; a container stream must "
                                         "start a session of its own")
                return
            what = m.describe_non_audio(data)
            if what is not None:
                self._error(m.NOT_AUDIO, f"the binary message is {what}, not PCM audio")
                return
            try:
                pcm = pcm16le_to_float(data)
            except AudioError as exc:
                self._error(m.INVALID_AUDIO, str(exc))
                return
            self._on_pcm(pcm)
        self._last_audio = self._loop.time()
        await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        """Backpressure: stop reading the socket while too much audio waits for the engine."""
        pump = self._pump
        while pump is not None and pump.backlog_seconds >= self.settings.max_backlog_s:
            try:
                await pump.drain()
            except Exception:  # noqa: BLE001 - the pump failed; _on_pump_error reports it
                return
        self._last_audio = self._loop.time()

    def _on_pcm(self, pcm: Audio) -> None:
        """Decoded audio to the pump (it hands the engine pieces of ``feed_interval_s``)."""
        if (self.state not in (State.ACTIVE, State.STOPPING, State.FINISHING)
                or self._engine_failed or self._pump is None):
            return
        try:
            self._pump.feed(pcm)
        except BacklogFull as exc:
            self._error(m.BACKLOG_FULL, f"audio dropped: {exc}")
        except Exception as exc:  # noqa: BLE001 - the engine failed on earlier audio
            self._report_engine_failure(exc)
            if self.state is State.ACTIVE and self._fail_task is None:
                self._fail_task = self._loop.create_task(self._end_after_failure())

    def _on_decode_error(self, error: AudioError) -> None:
        if self.state in (State.ACTIVE, State.STOPPING, State.FINISHING):
            self._error(m.INVALID_AUDIO, str(error))

    def _on_pump_error(self, exc: BaseException) -> None:
        """The engine failed inside the pump's task: tell the client now, end the session."""
        if self.state is State.CLOSED:
            return
        self._report_engine_failure(exc)
        if self.state is State.ACTIVE and self._fail_task is None:
            self._fail_task = self._loop.create_task(self._end_after_failure())

    async def _end_after_failure(self) -> None:
        try:
            async with self._lock:
                if self.state is State.ACTIVE:
                    await self._end(EndReason.ERROR)
        finally:
            self._fail_task = None

    async def _on_hypotheses(self, hyps: list[Hypothesis]) -> None:
        for hyp in hyps:
            text = hyp.text.strip()
            if hyp.is_final:
                if text:
                    self._finished.append(text)
                self._current = ""
            else:
                self._current = text
        if self.state is State.ACTIVE:
            text = self.text()
            if text and text != self._last_partial:
                self._last_partial = text
                self.partials_sent += 1
                self.channel.send_json(m.partial(text))

    # ------------------------------------------------------------------ errors

    def _report_engine_failure(self, exc: BaseException) -> None:
        if self._engine_failed:
            return
        self._engine_failed = True
        if isinstance(exc, ExecutorBusy):
            self._error(m.SERVER_BUSY, "the server is too busy to recognise this session")
        else:
            log.error("recognition_failed", error=f"{exc.__class__.__name__}: {exc}")
            self._error(m.ENGINE_ERROR, f"recognition failed: {exc.__class__.__name__}")

    def _error(self, code: str, message: str) -> None:
        """An error message now, the session going on (counted by the kit's channel)."""
        self.channel.send_error(ProtocolError(code, message))


def _first_frame_problem(data: bytes) -> tuple[str, str] | None:
    """Why a binary message cannot start a session, or None."""
    if sniff_container(data) is not None:
        return None
    what = m.describe_non_audio(data)
    if what is not None:
        return m.NOT_AUDIO, f"the binary message is {what}, not audio"
    if len(data) % 2:
        return m.INVALID_AUDIO, f"PCM int16 needs an even number of bytes, got {len(data)}"
    if not data:
        return m.INVALID_AUDIO, "empty audio message"
    return None
