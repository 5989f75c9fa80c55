"""One broadcast session: one sender's audio, recognised in order, each result sent to every
receiver and to the sender. An explicit state machine; it never touches a socket — clients are
the kit's :class:`~asrhub.protocol.Channel` objects.

States::

    WAITING ──attach_sender──▶ LIVE ──end_of_audio──▶ FINISHING ──(last result sent)──▶ CLOSED
       │                        │                        │
       └── last receiver left ──┴────── shutdown() ──────┴────────────────────────────▶ CLOSED

- WAITING: receivers only (they may join before the sender). Such a session does not count
  against ``max_sessions``: receivers cannot lock senders out (the connection limits bound
  them).
- LIVE: audio is accepted; receivers may join (they get the results from then on).
- FINISHING: the sender said ``close`` or went away; no more audio, the rest is still
  recognised and broadcast. A second sender is refused in LIVE and FINISHING.
- CLOSED: the sender got its acknowledgement; every client is closed (1000) — or, when the
  server shuts down, left for the core to close with 1001 after the last result; the registry
  has forgotten the session, so the same id starts a new session.

With ``[cluster] redis_url`` (:mod:`.fanout`) a session spans instances. The instance that
holds the sender takes the session's sender lock in Redis (a sender on another instance is
refused like a second one here) and publishes each result and the end; an instance whose
session has receivers and no sender (WAITING here) subscribes once and hands what arrives to its
receivers, and the sender's end closes them as it closes the sender's own. Redis lost: the
clients of the session get ``cluster_unavailable`` and are closed (1013); new ones are refused
the same way until Redis is back.

:class:`SenderConnection` and :class:`ReceiverConnection` are the kit's per-connection
sessions: thin, they hand audio and arrivals/departures to the shared :class:`BroadcastSession`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Any

import structlog

from asrhub.engine import SAMPLE_RATE, Audio
from asrhub.executor import ExecutorBusy, ExecutorClosed
from asrhub.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN,
    Channel,
    CloseInfo,
    ProtocolContext,
    ProtocolError,
    Session,
)
from asrhub.segmenter import SegmentEvent, SegmentPump, SpeechEnded, UtteranceSegmenter
from asrhub.streaming import BacklogFull

from .fanout import Bus, FanoutUnavailable, Feed, Owner, Remote
from .messages import (
    EndOfAudio,
    ErrorCode,
    closed_message,
    parse_sender_audio,
    parse_sender_text,
    refusal,
)
from .pipeline import Engines, Recognizer, make_segmenter
from .settings import BroadcastSettings

log = structlog.get_logger("asrhub.session_broadcast")

# Invalid audio/text messages a sender may send before it is closed (1007).
MAX_BAD_MESSAGES = 20
CLOSE_INVALID_DATA = 1007
SHUTDOWN_FLUSH_S = 30.0  # on server shutdown: time to recognise the audio already received
# Tasks nobody awaits (closing clients and subscriptions): kept here until done.
_BACKGROUND: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


class State(enum.Enum):
    WAITING = "waiting"
    LIVE = "live"
    FINISHING = "finishing"
    CLOSED = "closed"


class BroadcastSession:
    def __init__(
        self,
        session_id: str,
        settings: BroadcastSettings,
        ctx: ProtocolContext,
        *,
        on_closed: Callable[[BroadcastSession], None] | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.session_id = session_id
        self.settings = settings
        self.ctx = ctx
        self.state = State.WAITING
        self.sender: Channel | None = None
        self.receivers: list[Channel] = []
        self.results = 0
        self.segments = 0
        self.receivers_peak = 0
        self.end_reason = ""
        self.opened = time.monotonic()
        self.shutting_down = False  # the core closes the clients (1001) after the last result
        self.engines = Engines(ctx)
        self._on_closed = on_closed
        self._pump: SegmentPump | None = None
        self._segment_samples = 0  # segmented, not yet recognised
        self._segments: asyncio.Queue[SpeechEnded | None] = asyncio.Queue()
        self._eof = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._ending = False  # _close_all under way
        # Cluster mode: the bus; the sender lock and publisher when the sender is here; the
        # subscription while receivers here wait for results from elsewhere.
        self.bus = bus
        self._owner: Owner | None = None
        self._feed: Feed | None = None
        self._feed_lock = asyncio.Lock()

    @property
    def audio_seconds(self) -> float:
        return self._pump.audio_seconds if self._pump is not None else 0.0

    @property
    def processing_seconds(self) -> float:
        return self.engines.processing_seconds

    # ------------------------------------------------------------------ transitions

    def add_receiver(self, peer: Channel) -> None:
        if self.state is State.CLOSED:
            raise refusal(ErrorCode.SESSION_CLOSED, f"session {self.session_id!r} has ended")
        self._prune()
        if len(self.receivers) >= self.settings.max_receivers:
            raise refusal(ErrorCode.TOO_MANY_RECEIVERS, f"session {self.session_id!r} already has "
                                                        f"{self.settings.max_receivers} receivers")
        self.receivers.append(peer)
        self.receivers_peak = max(self.receivers_peak, len(self.receivers))

    def remove_receiver(self, peer: Channel) -> None:
        if peer in self.receivers:
            self.receivers.remove(peer)
        if self.state is State.WAITING and not self.receivers:
            self._mark_closed("no clients left")

    def check_sender(self) -> None:
        """Refuse a sender now if it could not attach."""
        if self.state is State.WAITING:
            return
        if self.state is State.CLOSED:
            raise refusal(ErrorCode.SESSION_CLOSED, f"session {self.session_id!r} has ended")
        what = "already has a sender" if self.state is State.LIVE else "is finishing its last sender's audio"
        raise refusal(ErrorCode.SENDER_EXISTS,
                      f"session {self.session_id!r} {what}: one sender per session")

    def attach_sender(self, peer: Channel, owner: Owner | None = None) -> None:
        """``owner``: the session's sender lock (cluster mode), taken by the caller."""
        self.check_sender()
        if self.state is State.WAITING:
            self.sender = peer
            self.state = State.LIVE
            if owner is not None:
                self._owner = owner
                owner.start(self._owner_lost)
            self._drop_feed()  # results come from here now
            self._pump = SegmentPump(self._open_segmenter, self._vad_call, self._on_segments,
                                     max_backlog_s=self.settings.max_backlog_s,
                                     on_error=self._vad_failed)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"broadcast-{self.session_id}")

    def feed(self, pcm: Audio) -> None:
        """Queue the sender's audio (never blocks)."""
        if self.state is not State.LIVE or self._pump is None:
            raise ProtocolError(ErrorCode.SESSION_CLOSED, "the session takes no more audio")
        waiting = int(self._pump.backlog_seconds * SAMPLE_RATE) + self._segment_samples
        too_much = ProtocolError(ErrorCode.BACKLOG_FULL,
                                 f"more than {self.settings.max_backlog_s:g} s of audio waiting to be "
                                 "recognised: the server cannot keep up with this sender")
        if waiting + len(pcm) > self._pump.max_backlog:
            raise too_much
        try:
            self._pump.feed(pcm)
        except BacklogFull:
            raise too_much from None

    def end_of_audio(self, reason: str) -> None:
        """The sender said ``close`` or went away: recognise what is left, then close."""
        if self.state is not State.LIVE:
            return
        self.state = State.FINISHING
        self.end_reason = reason
        self._eof.set()

    async def wait_closed(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Stop now: no more results, every client closed with 1001."""
        if self.state is State.CLOSED:
            return
        self.end_reason = self.end_reason or reason
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pump is not None:
            await self._pump.close()
        await self._close_all(1001, reason, ack=False)

    # ------------------------------------------------------------------ pipeline

    async def _vad_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.engines.call("vad", lambda _vad, *a: fn(*a), *args)

    async def _open_segmenter(self) -> UtteranceSegmenter:
        return make_segmenter(self.settings, await self.engines.call("vad", lambda vad: vad.open_stream()))

    async def _on_segments(self, events: list[SegmentEvent]) -> None:
        minimum = int(self.settings.min_segment_s * SAMPLE_RATE)
        for event in events:
            if isinstance(event, SpeechEnded) and event.samples >= max(minimum, 1):
                self.segments += 1
                self._segment_samples += event.samples
                self._segments.put_nowait(event)

    async def _vad_failed(self, exc: Exception) -> None:
        self._stop_accepting(self._failure(exc, "segmentation"))
        if self._pump is not None:
            self._pump.end_utterance()

    async def _run(self) -> None:
        assert self._pump is not None
        try:
            identify = await self.engines.load(self.settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - engines could not be loaded
            self._stop_accepting(self._failure(exc, "pipeline"))
            await self._pump.reset()
            await self._close_all(CLOSE_NORMAL, "session ended", ack=True)
            return
        recognize = asyncio.get_running_loop().create_task(
            self._recognize_loop(Recognizer(self.engines, self.settings, identify)),
            name=f"broadcast-asr-{self.session_id}")
        try:
            await self._eof.wait()
            await self._pump.finish()
            self._segments.put_nowait(None)
            await recognize
        except asyncio.CancelledError:
            recognize.cancel()
            raise
        finally:
            await self._pump.close()
        await self._close_all(CLOSE_NORMAL, "session ended", ack=True)

    async def _recognize_loop(self, recognizer: Recognizer) -> None:
        while (segment := await self._segments.get()) is not None:
            try:
                result = await recognizer.recognize(segment)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one segment lost; the session goes on
                code = self._failure(exc, "recognition")
                if isinstance(exc, ExecutorClosed):
                    return
                self._tell_sender_error(ProtocolError(
                    code, f"a segment at {segment.start / SAMPLE_RATE:.1f} s could not be recognised: {exc}"[:300]))
                continue
            finally:
                self._segment_samples -= segment.samples
            if result is not None:
                self.results += 1
                self._broadcast(result.to_dict())

    def _failure(self, exc: BaseException, stage: str) -> ErrorCode:
        code = ErrorCode.SERVER_BUSY if isinstance(exc, ExecutorBusy | ExecutorClosed) \
            else ErrorCode.RECOGNITION_FAILED
        log.warning("broadcast_stage_failed", session_id=self.session_id, stage=stage,
                    error=f"{exc.__class__.__name__}: {exc}")
        return code

    def _stop_accepting(self, code: ErrorCode) -> None:
        self._tell_sender_error(ProtocolError(code, "the session cannot continue: the server could "
                                                    "not process its audio"))
        if self.state is State.LIVE:
            self.end_of_audio(f"server error ({code})")

    # ------------------------------------------------------------------ other instances

    async def listen_remote(self) -> None:
        """Cluster mode, receivers here and no sender here: subscribe to the session's results
        (once per instance and session, shared by its receivers). Raises FanoutUnavailable."""
        if self.bus is None:
            return
        async with self._feed_lock:
            if self._feed is not None or self.state is not State.WAITING:
                return
            feed = await self.bus.subscribe(self.session_id, self._remote_message, self._remote_lost)
            if self.state is State.WAITING:
                self._feed = feed
                return
        await feed.close()  # a sender attached here meanwhile (or the session ended)

    def _drop_feed(self) -> None:
        if self._feed is not None:
            feed, self._feed = self._feed, None
            _spawn(feed.close())

    def _remote_message(self, remote: Remote) -> None:
        if self.state is not State.WAITING or remote.kind == "start":
            return  # the sender is here now, or the session is over; a start changes nothing
        if remote.kind == "result":
            self.results += 1
            self._prune()
            for peer in self.receivers:
                peer.send_json(remote.body)
            return
        code, reason = remote.body.get("code"), remote.body.get("reason")
        if not (isinstance(code, int) and 1000 <= code <= 4999):
            code = CLOSE_NORMAL
        if not isinstance(reason, str):
            reason = "session ended"
        self.end_reason = "the sender's session ended on another instance"
        self._end_here(code, reason[:120])

    def _remote_lost(self, why: str) -> None:
        if self.state is not State.WAITING:
            return
        self.end_reason = "Redis unreachable"
        self._end_here(CLOSE_TRY_AGAIN, "session lost: Redis unreachable", ProtocolError(
            ErrorCode.CLUSTER_UNAVAILABLE,
            f"{why}: results of this session's sender on another instance cannot reach this "
            "receiver; connect again when Redis is back"))

    def _end_here(self, code: int, reason: str, error: ProtocolError | None = None) -> None:
        """A session without a sender here ends for its receivers here."""
        receivers = [peer for peer in self.receivers if not peer.closed]
        self._mark_closed(reason)
        log.info("broadcast_session_closed", session_id=self.session_id, reason=self.end_reason,
                 results=self.results, receivers_peak=self.receivers_peak, sender="remote",
                 duration_s=round(time.monotonic() - self.opened, 3))
        for peer in receivers:
            if error is not None:
                peer.send_error(error)
            if not self.shutting_down:
                peer.close_soon(code, reason)

    def _owner_lost(self, why: str) -> None:
        """The sender is here and Redis is gone (or the lock was lost): the session ends."""
        if self.state in (State.LIVE, State.FINISHING) and not self._ending:
            _spawn(self._cluster_failed(why))

    async def _cluster_failed(self, why: str) -> None:
        if self.state not in (State.LIVE, State.FINISHING) or self._ending:
            return
        error = ProtocolError(ErrorCode.CLUSTER_UNAVAILABLE,
                              f"{why}: results can no longer reach receivers on other instances, "
                              "so the session ends; start it again when Redis is back")
        self._prune()
        for peer in [self.sender, *self.receivers]:
            if peer is not None and not peer.closed:
                peer.send_error(error)
        self.end_reason = "Redis unreachable"
        if self.state is State.LIVE:
            self.state = State.FINISHING  # no more audio
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pump is not None:
            await self._pump.close()
        await self._close_all(CLOSE_TRY_AGAIN, "session ended: Redis unreachable", ack=False)

    # ------------------------------------------------------------------ clients

    def _prune(self) -> None:
        self.receivers = [peer for peer in self.receivers if not peer.closed]

    def _broadcast(self, message: dict[str, Any]) -> None:
        self._prune()
        for peer in self.receivers:
            peer.send_json(message)
        if self.sender is not None and not self.sender.closed:
            self.sender.send_json(message)
        if self._owner is not None:
            self._owner.publish(message)

    def _tell_sender_error(self, err: ProtocolError) -> None:
        if self.sender is not None and not self.sender.closed:
            self.sender.send_error(err)
        else:  # nobody to tell, but it happened
            self.ctx.hub.count_error(self.ctx.name, str(err.code))

    def _mark_closed(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.end_reason = self.end_reason or reason
        self._drop_feed()
        self._closed.set()
        if self._on_closed is not None:
            self._on_closed(self)

    async def _close_all(self, code: int, reason: str, *, ack: bool) -> None:
        if self.state is State.CLOSED or self._ending:
            return
        self._ending = True
        if ack and self.sender is not None and not self.sender.closed:
            self.sender.send_json(closed_message(self.session_id, self.results, self.audio_seconds,
                                                 self.end_reason or reason))
        try:
            if self._owner is not None:  # the end reaches the receivers on other instances
                remote = (CLOSE_GOING_AWAY, "server shutting down") if self.shutting_down \
                    else (code, reason)
                await self._owner.finish(*remote)
        finally:
            sender, receivers = self.sender, list(self.receivers)
            self._mark_closed(reason)
        if not self.shutting_down:  # else the core closes everybody with 1001 after this
            closing = [peer.close(code, reason) for peer in receivers if not peer.closed]
            if sender is not None and not sender.closed:
                closing.append(sender.close(code, "session closed" if code == CLOSE_NORMAL else reason))
            await asyncio.gather(*closing, return_exceptions=True)
        log.info("broadcast_session_closed", session_id=self.session_id, reason=self.end_reason,
                 audio_s=round(self.audio_seconds, 3), segments=self.segments, results=self.results,
                 receivers_peak=self.receivers_peak,
                 duration_s=round(time.monotonic() - self.opened, 3))


class SessionRegistry:
    """The live sessions of one listener, by id."""

    def __init__(self, ctx: ProtocolContext, bus: Bus | None = None) -> None:
        self.ctx = ctx
        self.bus = bus  # cluster mode
        self.sessions: dict[str, BroadcastSession] = {}

    @property
    def settings(self) -> BroadcastSettings:
        return self.ctx.settings

    def get_or_create(self, session_id: str) -> BroadcastSession:
        session = self.sessions.get(session_id)
        if session is not None and session.state is not State.CLOSED:
            return session
        session = BroadcastSession(session_id, self.settings, self.ctx, on_closed=self._forget,
                                   bus=self.bus)
        self.sessions[session_id] = session
        return session

    def with_sender(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state in (State.LIVE, State.FINISHING))

    def check_sender(self, session: BroadcastSession) -> None:
        if session.state is State.WAITING and self.with_sender() >= self.settings.max_sessions:
            raise refusal(ErrorCode.TOO_MANY_SESSIONS,
                          f"the server already holds {self.settings.max_sessions} sessions")
        session.check_sender()

    def attach_sender(self, session: BroadcastSession, peer: Channel, owner: Owner | None = None) -> None:
        self.check_sender(session)
        session.attach_sender(peer, owner)

    async def join_receiver(self, session_id: str, peer: Channel) -> BroadcastSession:
        session = self.get_or_create(session_id)
        session.add_receiver(peer)
        try:
            await session.listen_remote()
        except BaseException as exc:  # refused, or the client went away while joining
            session.remove_receiver(peer)
            if isinstance(exc, FanoutUnavailable):
                raise refusal(ErrorCode.CLUSTER_UNAVAILABLE,
                              f"{exc}: receivers need it to get results from any instance; "
                              "try again later") from None
            raise
        return session

    async def join_sender(self, session_id: str, peer: Channel) -> BroadcastSession:
        session = self.get_or_create(session_id)
        try:
            self.check_sender(session)
            if self.bus is None:
                session.attach_sender(peer)
                return session
            try:
                owner = await self.bus.acquire(session_id)
            except FanoutUnavailable as exc:
                raise refusal(ErrorCode.CLUSTER_UNAVAILABLE,
                              f"{exc}: a sender needs it to reach receivers on every instance; "
                              "try again later") from None
            if owner is None:
                raise refusal(ErrorCode.SENDER_EXISTS, f"session {session_id!r} already has a sender "
                                                       "(on another instance): one sender per session")
            session = self.get_or_create(session_id)  # it may have ended meanwhile
            try:
                self.attach_sender(session, peer, owner)
            except BaseException:
                await owner.release()
                raise
            return session
        except BaseException:
            if session.state is State.WAITING and not session.receivers:
                session._mark_closed("sender refused")  # nobody left in it
            raise

    def _forget(self, session: BroadcastSession) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.shutdown() for s in list(self.sessions.values())),
                             return_exceptions=True)
        loop = asyncio.get_running_loop()
        pending = [task for task in _BACKGROUND if task.get_loop() is loop]
        if pending:  # clients and subscriptions being closed
            await asyncio.wait(pending, timeout=5.0)


# ----------------------------------------------------------------------------- connections


class ReceiverConnection(Session):
    """A receiver only listens; whatever it sends is answered once with an error and ignored."""

    def __init__(self, channel: Channel, session: BroadcastSession) -> None:
        self.channel = channel
        self.session = session
        self._warned = False

    async def on_text(self, text: str) -> None:
        self._refuse_data()

    async def on_binary(self, data: bytes) -> None:
        self._refuse_data()

    def _refuse_data(self) -> None:
        if not self._warned:
            self._warned = True
            raise ProtocolError(ErrorCode.RECEIVER_SENT_DATA, "receivers only receive results; "
                                "messages from a receiver are ignored")

    async def on_close(self, info: CloseInfo) -> None:
        if info.shutdown and self.session.state in (State.LIVE, State.FINISHING):
            # Results of audio already received still reach us before the core's 1001.
            self.session.shutting_down = True
            try:
                await self.session.wait_closed(SHUTDOWN_FLUSH_S)
            except TimeoutError:
                pass
        self.session.remove_receiver(self.channel)

    def summary(self) -> dict[str, Any]:
        return {"session_id": self.session.session_id, "mode": "receiver"}


class SenderConnection(Session):
    """The one sender of a session: float32 PCM frames and the text ``"close"``."""

    def __init__(self, channel: Channel, session: BroadcastSession) -> None:
        self.channel = channel
        self.session = session
        self.end = "sender disconnected"  # a closed browser tab sends no "close"
        self.bad = 0
        self.taking_audio = True

    async def on_text(self, text: str) -> None:
        if not self.taking_audio:
            return
        try:
            if isinstance(parse_sender_text(text), EndOfAudio):
                self._stop("sender sent close")
        except ProtocolError as exc:
            self._bad(exc)

    async def on_binary(self, data: bytes) -> None:
        if not self.taking_audio:
            return
        try:
            frame = parse_sender_audio(data)
            self.session.feed(frame.pcm)
            self.audio_seconds += len(frame.pcm) / SAMPLE_RATE
        except ProtocolError as exc:
            if exc.code in (ErrorCode.BACKLOG_FULL, ErrorCode.SESSION_CLOSED):
                # no more audio is taken: what was accepted is still recognised
                self._stop("backlog full" if exc.code is ErrorCode.BACKLOG_FULL else "server error")
                raise
            self._bad(exc)

    def _stop(self, reason: str) -> None:
        """No more audio: the session sends the remaining results, then the acknowledgement,
        then closes this connection (1000, "session closed")."""
        self.taking_audio = False
        self.end = reason
        self.session.end_of_audio(reason)

    def _bad(self, exc: ProtocolError) -> None:
        self.bad += 1
        self.channel.send_error(exc)
        if self.bad >= MAX_BAD_MESSAGES:
            # A client sending the wrong format gets one clear close, not an error per frame
            # forever. What it sent before still reaches the receivers.
            self._stop("too many invalid messages")
            self.channel.close_soon(CLOSE_INVALID_DATA, f"{MAX_BAD_MESSAGES} invalid messages "
                                    f'({exc.code}): expected float32 PCM, 16 kHz, mono, and text "close"')

    async def on_close(self, info: CloseInfo) -> None:
        if info.shutdown:
            self._stop("server shutting down")
            self.session.shutting_down = True
            try:  # the audio already received is recognised and broadcast before the 1001
                await self.session.wait_closed(SHUTDOWN_FLUSH_S)
            except TimeoutError:
                log.warning("broadcast_flush_incomplete", session_id=self.session.session_id)
        elif self.taking_audio:
            self._stop(self.end)

    @property
    def processing_seconds(self) -> float:  # type: ignore[override]
        return self.session.processing_seconds

    def summary(self) -> dict[str, Any]:
        s = self.session
        return {"session_id": s.session_id, "mode": "sender", "results": s.results,
                "segments": s.segments, "receivers_peak": s.receivers_peak, "end": self.end}
