"""One broadcast session: one sender's audio, recognised in order, each result sent to every
receiver and to the sender. An explicit state machine; it never touches a socket — clients are
:class:`Peer` objects (``asrhub.connection.Connection`` in the server, anything with the same
three members in tests).

States::

    WAITING ──attach_sender──▶ LIVE ──end_of_audio──▶ FINISHING ──(last result sent)──▶ CLOSED
       │                        │                        │
       └── last receiver left ──┴────── shutdown() ──────┴────────────────────────────▶ CLOSED

- WAITING: receivers only (they may join before the sender).
- LIVE: audio is accepted; receivers may join (they get the results from then on).
- FINISHING: the sender said ``close`` or went away; no more audio, the rest is still
  recognised and broadcast. A second sender is refused in LIVE and FINISHING.
- CLOSED: the sender got its acknowledgement; every client is closed (1000); the registry has
  forgotten the session, so the same id starts a new session.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import structlog
from aiohttp import WSCloseCode

from asrhub.engine import SAMPLE_RATE, Audio
from asrhub.executor import ExecutorBusy, ExecutorClosed, InferenceExecutor, Priority

from .messages import ErrorCode, ProtocolError, closed_message, error_message
from .pipeline import Engines, Recognizer, Segmenter, SpeechSegment
from .settings import BroadcastSettings

log = structlog.get_logger("asrhub.session_broadcast")


class Peer(Protocol):
    """A client as the session sees it. ``send_json`` never blocks (a bounded queue behind it
    closes a client that falls too far behind); ``closed`` is True once it is gone."""

    @property
    def closed(self) -> bool: ...

    def send_json(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int = WSCloseCode.OK, reason: str = "") -> None: ...


class State(enum.Enum):
    WAITING = "waiting"
    LIVE = "live"
    FINISHING = "finishing"
    CLOSED = "closed"


EngineLoader = Callable[[], Awaitable[Engines]]


class BroadcastSession:
    def __init__(
        self,
        session_id: str,
        settings: BroadcastSettings,
        *,
        load_engines: EngineLoader,
        executor: InferenceExecutor,
        on_closed: Callable[[BroadcastSession], None] | None = None,
        on_error: Callable[[ErrorCode], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.settings = settings
        self.state = State.WAITING
        self.sender: Peer | None = None
        self.receivers: list[Peer] = []
        self.results = 0
        self.segments = 0
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self.receivers_peak = 0
        self.end_reason = ""
        self.opened = time.monotonic()
        self._load_engines = load_engines
        self._executor = executor
        self._on_closed = on_closed
        self._on_error = on_error
        self._max_backlog = int(settings.max_backlog_s * SAMPLE_RATE)
        self._audio: list[Audio] = []
        self._queued_samples = 0  # received, not yet through the VAD
        self._segment_samples = 0  # segmented, not yet recognised
        self._segments: asyncio.Queue[SpeechSegment | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._eof = False
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ transitions

    def add_receiver(self, peer: Peer) -> None:
        if self.state is State.CLOSED:
            raise ProtocolError(ErrorCode.SESSION_CLOSED, f"session {self.session_id!r} has ended")
        self._prune()
        if len(self.receivers) >= self.settings.max_receivers:
            raise ProtocolError(ErrorCode.TOO_MANY_RECEIVERS,
                                f"session {self.session_id!r} already has "
                                f"{self.settings.max_receivers} receivers")
        self.receivers.append(peer)
        self.receivers_peak = max(self.receivers_peak, len(self.receivers))

    def remove_receiver(self, peer: Peer) -> None:
        if peer in self.receivers:
            self.receivers.remove(peer)
        if self.state is State.WAITING and not self.receivers:
            self._mark_closed("no clients left")

    def attach_sender(self, peer: Peer) -> None:
        if self.state is State.WAITING:
            self.sender = peer
            self.state = State.LIVE
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"broadcast-{self.session_id}")
            return
        if self.state is State.CLOSED:
            raise ProtocolError(ErrorCode.SESSION_CLOSED, f"session {self.session_id!r} has ended")
        what = "already has a sender" if self.state is State.LIVE else "is finishing its last sender's audio"
        raise ProtocolError(ErrorCode.SENDER_EXISTS,
                            f"session {self.session_id!r} {what}: one sender per session")

    def feed(self, pcm: Audio) -> None:
        """Queue the sender's audio (never blocks)."""
        if self.state is not State.LIVE:
            raise ProtocolError(ErrorCode.SESSION_CLOSED, "the session takes no more audio")
        if self._queued_samples + self._segment_samples + len(pcm) > self._max_backlog:
            raise ProtocolError(ErrorCode.BACKLOG_FULL,
                                f"more than {self.settings.max_backlog_s:g} s of audio waiting to be "
                                "recognised: the server cannot keep up with this sender")
        if len(pcm) == 0:
            return
        self._audio.append(pcm)
        self._queued_samples += len(pcm)
        self.audio_seconds += len(pcm) / SAMPLE_RATE
        self._wake.set()

    def end_of_audio(self, reason: str) -> None:
        """The sender said ``close`` or went away: recognise what is left, then close."""
        if self.state is not State.LIVE:
            return
        self.state = State.FINISHING
        self.end_reason = reason
        self._eof = True
        self._wake.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Stop now (server shutdown): no more results, every client closed with 1001."""
        if self.state is State.CLOSED:
            return
        self.end_reason = self.end_reason or reason
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        await self._close_all(WSCloseCode.GOING_AWAY, reason, ack=False)

    # ------------------------------------------------------------------ pipeline

    async def _run(self) -> None:
        recognize: asyncio.Task[None] | None = None
        try:
            engines = await self._load_engines()
            vad_stream = await self._executor.run(engines.vad.open_stream, priority=Priority.LIVE)
            segmenter = Segmenter(vad_stream, max_segment_s=self.settings.max_segment_s,
                                  min_segment_s=self.settings.min_segment_s)
            recognizer = Recognizer(engines, self._executor, self.settings)
            recognize = asyncio.get_running_loop().create_task(
                self._recognize_loop(recognizer), name=f"broadcast-asr-{self.session_id}")
            try:
                await self._segment_loop(segmenter, getattr(engines.vad, "name", None))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the VAD failed: recognise what we have
                self._stop_accepting(self._failure(exc, "segmentation"))
            self._segments.put_nowait(None)
            await recognize
        except asyncio.CancelledError:
            if recognize is not None:
                recognize.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - engines could not be loaded (or a bug)
            self._stop_accepting(self._failure(exc, "pipeline"))
        await self._close_all(WSCloseCode.OK, "session ended", ack=True)

    async def _segment_loop(self, segmenter: Segmenter, engine: str | None) -> None:
        while True:
            if not self._audio:
                if self._eof:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            chunks, self._audio = self._audio, []
            pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            try:
                found = await self._timed(segmenter.accept, pcm, engine=engine)
            finally:
                self._queued_samples -= len(pcm)
            self._queue(found)
        self._queue(await self._timed(segmenter.finish, engine=engine))

    def _queue(self, segments: list[SpeechSegment]) -> None:
        for segment in segments:
            self.segments += 1
            self._segment_samples += segment.samples
            self._segments.put_nowait(segment)

    async def _recognize_loop(self, recognizer: Recognizer) -> None:
        while (segment := await self._segments.get()) is not None:
            started = time.perf_counter()
            try:
                result = await recognizer.recognize(segment)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one segment lost; the session goes on
                code = self._failure(exc, "recognition")
                if isinstance(exc, ExecutorClosed):
                    return
                self._tell_sender(error_message(code, f"a segment at {segment.start / SAMPLE_RATE:.1f} s "
                                                      f"could not be recognised: {exc}"))
                continue
            finally:
                self._segment_samples -= segment.samples
                self.processing_seconds += time.perf_counter() - started
            if result is not None:
                self.results += 1
                self._broadcast(result.to_dict())

    async def _timed(self, fn: Callable[..., Any], *args: Any, engine: str | None) -> Any:
        started = time.perf_counter()
        try:
            return await self._executor.run(fn, *args, priority=Priority.LIVE, engine=engine)
        finally:
            self.processing_seconds += time.perf_counter() - started

    def _failure(self, exc: BaseException, stage: str) -> ErrorCode:
        code = ErrorCode.SERVER_BUSY if isinstance(exc, ExecutorBusy | ExecutorClosed) \
            else ErrorCode.RECOGNITION_FAILED
        log.warning("broadcast_stage_failed", session_id=self.session_id, stage=stage,
                    error=f"{exc.__class__.__name__}: {exc}")
        if self._on_error is not None:
            self._on_error(code)
        return code

    def _stop_accepting(self, code: ErrorCode) -> None:
        self._tell_sender(error_message(code, "the session cannot continue: the server could not "
                                              "process its audio"))
        if self.state is State.LIVE:
            self.end_of_audio(f"server error ({code})")
        self._audio.clear()
        self._queued_samples = 0

    # ------------------------------------------------------------------ clients

    def _prune(self) -> None:
        self.receivers = [peer for peer in self.receivers if not peer.closed]

    def _broadcast(self, message: dict[str, Any]) -> None:
        self._prune()
        for peer in self.receivers:
            peer.send_json(message)
        self._tell_sender(message)

    def _tell_sender(self, message: dict[str, Any]) -> None:
        if self.sender is not None and not self.sender.closed:
            self.sender.send_json(message)

    def _mark_closed(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.end_reason = self.end_reason or reason
        self._closed.set()
        if self._on_closed is not None:
            self._on_closed(self)

    async def _close_all(self, code: int, reason: str, *, ack: bool) -> None:
        if self.state is State.CLOSED:
            return
        if ack:
            self._tell_sender(closed_message(self.session_id, self.results, self.audio_seconds,
                                             self.end_reason or reason))
        sender, receivers = self.sender, list(self.receivers)
        self._mark_closed(reason)
        closing = [peer.close(code, reason) for peer in receivers if not peer.closed]
        if sender is not None and not sender.closed:
            closing.append(sender.close(code, "session closed" if code == WSCloseCode.OK else reason))
        await asyncio.gather(*closing, return_exceptions=True)
        log.info("broadcast_session_closed", session_id=self.session_id, reason=self.end_reason,
                 audio_s=round(self.audio_seconds, 3), segments=self.segments, results=self.results,
                 receivers_peak=self.receivers_peak,
                 duration_s=round(time.monotonic() - self.opened, 3))


class SessionRegistry:
    """The live sessions of one listener, by id."""

    def __init__(self, settings: BroadcastSettings, *, load_engines: EngineLoader,
                 executor: Callable[[], InferenceExecutor],
                 on_error: Callable[[ErrorCode], None] | None = None) -> None:
        self.settings = settings
        self._load_engines = load_engines
        self._executor = executor
        self._on_error = on_error
        self.sessions: dict[str, BroadcastSession] = {}

    def get_or_create(self, session_id: str) -> BroadcastSession:
        session = self.sessions.get(session_id)
        if session is not None and session.state is not State.CLOSED:
            return session
        if len(self.sessions) >= self.settings.max_sessions:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS,
                                f"the server already holds {self.settings.max_sessions} sessions")
        session = BroadcastSession(session_id, self.settings, load_engines=self._load_engines,
                                   executor=self._executor(), on_closed=self._forget,
                                   on_error=self._on_error)
        self.sessions[session_id] = session
        return session

    def _forget(self, session: BroadcastSession) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.shutdown() for s in list(self.sessions.values())),
                             return_exceptions=True)
