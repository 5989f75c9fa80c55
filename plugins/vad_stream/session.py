"""One vad_stream connection as an explicit state machine, on the protocol kit.

Modes (the seed's 工作模式): STREAMING (default: audio goes through the VAD, each segment is
filtered, optionally speaker-verified, then recognised), BATCH (audio is kept until
``batch_end``), REGISTERING (audio is kept until ``speaker_register_end``), and
BATCH_CANCELLED (a batch went over its size limit: audio is dropped until the client ends
or restarts it).

Work runs in two ordered stages so commands are answered while models run:

1. the VAD stage: the core's :class:`~asrhub.segmenter.SegmentPump` (bounded backlog →
   optional noise suppression → :class:`~asrhub.segmenter.UtteranceSegmenter` with the seed's
   dual hysteresis), emitting ``speech_start`` / ``speech_end``;
2. the job stage: segments, batch jobs and registrations, one at a time in arrival order, so
   the results of one connection come out in order.

Both stages are bounded. The session talks to the client only through its
:class:`~asrhub.protocol.Channel`; every engine call goes through :class:`Engines`, which tags
it with its engine. Errors raised while handling a message are the core's to report; errors
of the background stages are sent with ``channel.send_error``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from asrhub.audio import pcm16le_to_float, resample
from asrhub.engine import SAMPLE_RATE, Audio, DenoiseStream, EngineError, Voiceprint
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority
from asrhub.hub import EngineKind
from asrhub.language import LanguagePin, language_code
from asrhub.protocol import Channel, CloseInfo, Credential, ProtocolContext, ProtocolError, Session
from asrhub.segmenter import (
    SegmentEvent,
    SegmentPump,
    SpeechEnded,
    SpeechStarted,
    UtteranceSegmenter,
)
from asrhub.streaming import BacklogFull

from . import messages as msg
from .messages import Command, ErrorCode
from .quality import segment_rejection, text_rejection
from .settings import VadStreamSettings

log = structlog.get_logger("asrhub.vad_stream")

FLUSH_TIMEOUT_S = 30.0  # on server shutdown: time to finish the results of audio received


class Mode(enum.Enum):
    STREAMING = "streaming"
    BATCH = "batch_receiving"
    BATCH_CANCELLED = "batch_cancelled"
    REGISTERING = "registering"


class Engines:
    """How a session reaches the hub's engines: ``call(kind, fn, *args)`` runs ``fn(engine,
    *args)`` in the inference executor, tagged with that engine (per-engine limits always
    apply), and counts the time as the session's processing time."""

    def __init__(self, ctx: ProtocolContext, settings: VadStreamSettings) -> None:
        self.ctx = ctx
        self.names: dict[str, str | None] = {"asr": settings.asr_engine or None,
                                             "denoise": settings.ns_engine or None}
        self.processing_seconds = 0.0

    async def call(self, kind: EngineKind, fn: Callable[..., Any], *args: Any,
                   priority: Priority = Priority.LIVE) -> Any:
        started = time.perf_counter()
        try:
            return await self.ctx.infer(kind, fn, *args, priority=priority, name=self.names.get(kind))
        finally:
            self.processing_seconds += time.perf_counter() - started

    async def run(self, fn: Callable[..., Any], *args: Any, priority: Priority = Priority.LIVE) -> Any:
        """Plain CPU work (no engine) in the executor."""
        return await self.ctx.executor.run(fn, *args, priority=priority)

    async def speaker(self) -> Any:
        """The speaker engine itself, for its name and threshold (loaded on first use)."""
        return await self.ctx.hub.speaker()


@dataclass(frozen=True)
class Verification:
    user_id: str
    required: bool


@dataclass
class _SegmentJob:
    segment: SpeechEnded
    verification: Verification | None


@dataclass
class _BatchJob:
    pcm: bytes
    sample_rate: int
    language: str | None


@dataclass
class _RegisterJob:
    user_id: str
    pcm: bytes


def _reenrol(user_id: str, voiceprint: Voiceprint, engine_name: str) -> str:
    return (f"Speaker {user_id} was registered with the {voiceprint.engine!r} speaker engine; "
            f"register again to verify with {engine_name!r}")


def _failure_message(exc: BaseException, what: str) -> str:
    if isinstance(exc, ExecutorBusy):
        return "server busy: inference queue full, try again later"
    if isinstance(exc, ExecutorClosed):
        return "server shutting down"
    return f"{what} failed: {exc.__class__.__name__}: {exc}"[:300]


def make_segmenter(settings: VadStreamSettings, vad_stream: Any) -> UtteranceSegmenter:
    """The seed's segmentation: 3 speech frames in, 10 silence frames out, pre-roll, a length cap."""
    frame = settings.frame_samples
    return UtteranceSegmenter(
        vad_stream, enter_samples=settings.vad_speech_frames * frame,
        exit_samples=settings.vad_silence_frames * frame,
        prefix_samples=int(settings.prefix_padding_ms * SAMPLE_RATE / 1000),
        history_samples=int(settings.buffer_max_s * SAMPLE_RATE),
        max_samples=int(settings.max_segment_s * SAMPLE_RATE))


class RegistrationLimiter:
    """Speaker registrations per client address in the last minute (one per listener)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: dict[str, collections.deque[float]] = {}

    def admit(self, peer: str) -> bool:
        if not self.per_minute:
            return True
        now = time.monotonic()
        for key in [k for k, q in self._times.items() if not q or now - q[-1] > 60]:
            del self._times[key]  # bounded: only addresses seen in the last minute
        recent = self._times.setdefault(peer, collections.deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return False
        recent.append(now)
        return True


def may_overwrite(mode: str, owner: str, credential: Credential, *, registered_here: bool) -> bool:
    """``speaker_overwrite``: may a client holding ``credential`` replace a voiceprint stored
    with ``owner``? "owner" (and its old name "token"): the admin token, the same token scope
    as the owner (a voiceprint without one has no owner to match), or the connection that
    registered it (while it is still its scope's: not after the id was deleted and someone
    else took it); "always": anyone (the seed); "never": no client."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    return credential.admin or (owner == credential.scope and (bool(owner) or registered_here))


class VadStreamSession(Session):
    def __init__(self, channel: Channel, ctx: ProtocolContext, settings: VadStreamSettings,
                 limiter: RegistrationLimiter | None = None) -> None:
        self.channel = channel
        self.settings = settings
        self.engines = Engines(ctx, settings)
        self.limiter = limiter or RegistrationLimiter(settings.speaker_registrations_per_minute)
        self._registered: set[str] = set()  # ids this connection registered (may re-register)
        self.mode = Mode.STREAMING
        self._default_verification = (
            Verification(settings.speaker_verification_default_user.strip(), True)
            if settings.speaker_verification_required else None)
        self.verification = self._default_verification
        # streaming
        self._carry = b""  # odd byte of a PCM sample split across messages
        self._backlog_reported = False
        self._denoise: DenoiseStream | None = None
        self.language = LanguagePin(settings.language or None)
        self.pump = self._new_pump()
        self.segment_id = 0
        # batch / registration buffers
        self._buffer = bytearray()
        self._buffer_rate = SAMPLE_RATE
        self._buffer_language: str | None = None
        self._buffer_reported = 0  # bytes at the last progress message
        self._register_user: str | None = None
        # jobs
        self._jobs: asyncio.Queue[Any] = asyncio.Queue(settings.max_pending_jobs)
        self._job_task: asyncio.Task[None] | None = None
        self.stats: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ kit callbacks

    async def on_open(self) -> None:
        self._job_task = asyncio.get_running_loop().create_task(self._job_loop(), name="vad_stream-jobs")

    async def on_text(self, text: str) -> None:
        try:
            command = msg.parse_command(text)
            await getattr(self, f"_cmd_{command.name}")(command)
        except ProtocolError as exc:
            self._note_error(exc)
            raise  # the core sends the seed's error message and counts it

    async def on_binary(self, data: bytes) -> None:
        try:
            if self.mode is Mode.STREAMING:
                self._feed_streaming(data)
            elif self.mode is Mode.BATCH:
                self._feed_batch(data)
            elif self.mode is Mode.REGISTERING:
                self._feed_registration(data)
            # BATCH_CANCELLED: dropped until batch_end / batch_start / reset
        except ProtocolError as exc:
            self._note_error(exc)
            raise

    async def on_close(self, info: CloseInfo) -> None:
        if info.shutdown:  # the channel still sends: results for the audio already received
            try:
                await asyncio.wait_for(self._flush(), FLUSH_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - closing anyway (TimeoutError included)
                log.warning("vad_stream_flush_incomplete", error=repr(exc))
        await self._stop()

    def summary(self) -> dict[str, Any]:
        return dict(self.stats)

    @property
    def processing_seconds(self) -> float:  # type: ignore[override]
        return self.engines.processing_seconds

    @property
    def is_speeching(self) -> bool:
        return self.pump.in_speech

    # ------------------------------------------------------------------ lifecycle

    async def _flush(self) -> None:
        if self.mode is Mode.BATCH and len(self._buffer) // 2 / self._buffer_rate >= self.settings.batch_min_s:
            await self._cmd_batch_end(Command("batch_end"))  # the batch received so far
        await self.pump.finish()
        await self._jobs.join()

    async def _stop(self) -> None:
        await self.pump.close()
        task, self._job_task = self._job_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def drain(self, timeout: float = 120.0) -> None:
        """Wait until all audio and jobs received so far are processed (tests)."""
        async def idle() -> None:
            while True:
                await self.pump.drain()
                await self._jobs.join()
                if self.pump.backlog_seconds == 0 and self._jobs.empty():
                    return

        await asyncio.wait_for(idle(), timeout)

    def _new_pump(self) -> SegmentPump:
        return SegmentPump(self._open_segmenter, self._vad_call, self._segment_events,
                           max_backlog_s=self.settings.max_backlog_s, on_error=self._vad_failed,
                           transform=self._denoise_chunk)

    # ------------------------------------------------------------------ input

    def _feed_streaming(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if len(data) % 2:
            data, self._carry = data[:-1], data[-1:]
        if not data:
            return
        pcm = pcm16le_to_float(data)
        try:
            self.pump.feed(pcm)
        except BacklogFull:
            if not self._backlog_reported:
                self._backlog_reported = True
                raise ProtocolError(ErrorCode.PROCESSING, f"audio backlog over {self.settings.max_backlog_s:g} s: "
                                    "the server cannot keep up; audio is dropped") from None
            return
        if self.pump.backlog_seconds < self.settings.max_backlog_s / 2:
            self._backlog_reported = False
        self.audio_seconds += len(pcm) / SAMPLE_RATE

    def _feed_batch(self, data: bytes) -> None:
        limit = int(self.settings.batch_max_s * self._buffer_rate) * 2
        if len(self._buffer) + len(data) > limit:
            self._buffer = bytearray()
            self.mode = Mode.BATCH_CANCELLED
            raise ProtocolError(ErrorCode.PROCESSING, f"Audio duration exceeds maximum of "
                                f"{self.settings.batch_max_s:g}s: the batch was cancelled")
        self._buffer += data
        self.audio_seconds += len(data) / 2 / self._buffer_rate
        if len(self._buffer) - self._buffer_reported >= self.settings.progress_interval_bytes:
            self._buffer_reported = len(self._buffer)
            self.send(msg.batch_progress("receiving", "Receiving audio data...",
                                         received_bytes=len(self._buffer)))

    def _feed_registration(self, data: bytes) -> None:
        # Audio past the maximum is ignored: the first speaker_max_registration_s seconds count.
        limit = int(self.settings.speaker_max_registration_s * SAMPLE_RATE) * 2
        room = limit - len(self._buffer)
        if room <= 0:
            return
        self._buffer += data[:room]
        self.audio_seconds += min(len(data), room) / 2 / SAMPLE_RATE
        if len(self._buffer) - self._buffer_reported >= self.settings.progress_interval_bytes \
                or len(self._buffer) >= limit:
            self._buffer_reported = len(self._buffer)
            capped = " (maximum reached, further audio is ignored)" if len(self._buffer) >= limit else ""
            self.send(msg.register_progress("receiving", "Collecting audio..." + capped,
                                            received_bytes=len(self._buffer),
                                            duration=len(self._buffer) // 2 / SAMPLE_RATE))

    # ------------------------------------------------------------------ output

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send_json(message)

    def _note_error(self, err: ProtocolError) -> None:
        self.stats[f"error_{int(err.code)}"] += 1
        log.info("vad_stream_error", code=int(err.code), message=err.message)

    def error(self, err: ProtocolError) -> None:
        """An error found outside the handling of a client message (the background stages)."""
        self._note_error(err)
        self.channel.send_error(err)

    # ------------------------------------------------------------------ commands

    async def _cmd_ping(self, command: Command) -> None:
        self.send(msg.pong())

    async def _cmd_reset(self, command: Command) -> None:
        await self._stop()
        self.pump = self._new_pump()  # a fresh VAD stream on the next audio
        self._denoise = None
        self._jobs = asyncio.Queue(self.settings.max_pending_jobs)
        self._carry = b""
        self._buffer = bytearray()
        self._register_user = None
        self.mode = Mode.STREAMING
        self.segment_id = 0
        self.language.reset()
        self.verification = self._default_verification
        await self.on_open()
        if self._default_verification is not None:
            self.send(msg.reset_done("State reset (speaker verification re-enabled by global config)"))
        else:
            self.send(msg.reset_done())

    async def _cmd_batch_start(self, command: Command) -> None:
        self._enter(Mode.BATCH)
        self._buffer_rate = command.sample_rate or SAMPLE_RATE
        self._buffer_language = command.language
        self.send(msg.batch_progress("receiving", "Batch mode started, waiting for audio data"))

    async def _cmd_batch_end(self, command: Command) -> None:
        if self.mode is Mode.BATCH_CANCELLED:
            self._enter(Mode.STREAMING)
            raise ProtocolError(ErrorCode.BATCH_NOT_STARTED,
                                "Batch mode not active (the batch was cancelled)")
        if self.mode is not Mode.BATCH:
            raise ProtocolError(ErrorCode.BATCH_NOT_STARTED, "Batch mode not active")
        pcm, rate = bytes(self._buffer), self._buffer_rate
        self._enter(Mode.STREAMING)
        if len(pcm) < 2:
            raise ProtocolError(ErrorCode.EMPTY_AUDIO, "No audio data received")
        duration = len(pcm) // 2 / rate
        if duration < self.settings.batch_min_s:
            raise ProtocolError(ErrorCode.AUDIO_TOO_SHORT,
                                f"Audio too short: {duration:.2f}s < {self.settings.batch_min_s:g}s")
        self.send(msg.batch_progress("recognizing", "Processing audio..."))
        await self._jobs.put(_BatchJob(pcm, rate, self._buffer_language))

    async def _cmd_speaker_register_start(self, command: Command) -> None:
        if command.user_id is None:
            raise ProtocolError(ErrorCode.REGISTER_MISSING_USER, "Missing user_id parameter")
        await self._check_registration(command.user_id)
        self._enter(Mode.REGISTERING)
        self._register_user = command.user_id
        self.send(msg.register_progress(
            "started", f"Registration started for user: {command.user_id}, please send audio "
                       f"(min {self.settings.speaker_min_registration_s:g}s)"))

    async def _cmd_speaker_register_end(self, command: Command) -> None:
        if self.mode is not Mode.REGISTERING or self._register_user is None:
            raise ProtocolError(ErrorCode.REGISTER_NOT_ACTIVE, "Registration mode not active")
        user_id, pcm = self._register_user, bytes(self._buffer)
        self._enter(Mode.STREAMING)
        if len(pcm) < 2:
            raise ProtocolError(ErrorCode.REGISTER_NO_AUDIO, "No audio data received")
        duration = len(pcm) // 2 / SAMPLE_RATE
        minimum = self.settings.speaker_min_registration_s
        if duration < minimum:
            raise ProtocolError(ErrorCode.REGISTER_TOO_SHORT,
                                f"Audio too short: {duration:.1f}s < {minimum:g}s")
        if not self.limiter.admit(self.channel.peer):
            raise ProtocolError(ErrorCode.PROCESSING, "Too many speaker registrations: at most "
                                f"{self.settings.speaker_registrations_per_minute} per minute")
        await self._jobs.put(_RegisterJob(user_id, pcm))

    async def _cmd_speaker_verify_enable(self, command: Command) -> None:
        if command.user_id is None:
            raise ProtocolError(ErrorCode.VERIFY_MISSING_USER, "Missing user_id parameter")
        await self._voiceprint(command.user_id)  # raises 16 when not registered
        # Enforced by the server's configuration: a client may pick whom to verify, not skip it.
        required = command.required or self._default_verification is not None
        self.verification = Verification(command.user_id, required)
        self.send(msg.verify_enabled(command.user_id, required))

    async def _cmd_speaker_verify_disable(self, command: Command) -> None:
        if self._default_verification is not None:
            raise ProtocolError(ErrorCode.PROCESSING, "Speaker verification is enforced by the "
                                "server configuration and cannot be disabled")
        self.verification = None
        self.send(msg.verify_disabled())

    async def _cmd_speaker_list(self, command: Command) -> None:
        voiceprints = await self._store_call(lambda store: store.list())
        self.send(msg.speaker_list([
            {"user_id": vp.speaker_id, "dimension": int(len(vp.embedding)),
             "registered_at": int(vp.created_at)}
            for vp in voiceprints if self._visible(vp)]))

    def _enter(self, mode: Mode) -> None:
        """Switch modes; leaving streaming closes a speech segment still open."""
        if self.mode is Mode.STREAMING and mode is not Mode.STREAMING:
            self.pump.end_utterance()
        self.mode = mode
        self._carry = b""
        self._buffer = bytearray()
        self._buffer_reported = 0
        if mode is not Mode.REGISTERING:
            self._register_user = None

    # ------------------------------------------------------------------ stage 1: VAD

    async def _vad_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.engines.call("vad", lambda _vad, *a: fn(*a), *args)

    async def _open_segmenter(self) -> UtteranceSegmenter:
        stream = await self.engines.call("vad", lambda vad: vad.open_stream())
        self._denoise = None
        if self.settings.ns_enabled:
            self._denoise = await self.engines.call("denoise", lambda d: d.open_stream() if d else None)
        return make_segmenter(self.settings, stream)

    def _denoise_chunk(self, pcm: Audio) -> Audio:  # in the executor, inside the VAD call
        return self._denoise.process(pcm) if self._denoise is not None else pcm

    async def _vad_failed(self, exc: Exception) -> None:
        log.warning("vad_stream_vad_failed", error=repr(exc))
        self.error(ProtocolError(ErrorCode.PROCESSING, _failure_message(exc, "VAD")))

    async def _segment_events(self, events: list[SegmentEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self.send(msg.speech_start())
                continue
            assert isinstance(event, SpeechEnded)
            self.stats["segments"] += 1
            self.send(msg.speech_end(event.samples))
            reason = segment_rejection(event, self.settings)
            if reason is not None:
                self.stats["segments_filtered"] += 1
                log.debug("segment_filtered", reason=reason, samples=event.samples)
                continue
            await self._jobs.put(_SegmentJob(event, self.verification))

    # ------------------------------------------------------------------ stage 2: jobs

    async def _job_loop(self) -> None:
        jobs = self._jobs
        while True:
            job = await jobs.get()
            try:
                if isinstance(job, _SegmentJob):
                    await self._recognize_segment(job)
                elif isinstance(job, _BatchJob):
                    await self._recognize_batch(job)
                elif isinstance(job, _RegisterJob):
                    await self._register(job)
            except asyncio.CancelledError:
                raise
            except ProtocolError as exc:
                self.error(exc)
            except Exception as exc:  # noqa: BLE001 - the connection survives, the client is told
                if not isinstance(exc, EngineError | ExecutorBusy | ExecutorClosed | ValueError):
                    log.exception("vad_stream_job_failed", job=type(job).__name__)
                self.error(ProtocolError(ErrorCode.PROCESSING, _failure_message(exc, "Recognition")))
            finally:
                jobs.task_done()

    async def _recognize_segment(self, job: _SegmentJob) -> None:
        audio = job.segment.audio
        if job.verification is not None:
            verified = await self._verify(job.verification, audio)
            if not verified and job.verification.required:
                self.stats["segments_rejected_speaker"] += 1
                return
        transcript = await self._transcribe(audio, self.language.language, Priority.LIVE)
        text = transcript.text.strip()
        self.language.observe(transcript.language, len(audio) / SAMPLE_RATE, text)
        reason = text_rejection(text, self.settings)
        if reason is not None:
            self.stats["texts_filtered"] += 1
            log.debug("text_filtered", reason=reason)
            return
        self.segment_id += 1
        self.stats["results"] += 1
        self.send(msg.result(text, self.segment_id, is_speeching=self.is_speeching))

    async def _recognize_batch(self, job: _BatchJob) -> None:
        samples = len(job.pcm) // 2

        def prepare(pcm: bytes, rate: int) -> Audio:
            return resample(pcm16le_to_float(pcm[: samples * 2]), rate)

        audio = await self.engines.run(prepare, job.pcm, job.sample_rate, priority=Priority.BATCH)
        audio = await self._denoise_whole(audio, Priority.BATCH)
        language = job.language if job.language is not None else (self.settings.language or None)
        transcript = await self._transcribe(audio, language_code(language), Priority.BATCH)
        self.stats["batches"] += 1
        self.send(msg.batch_result(transcript.text.strip(), samples, job.sample_rate))
        self.send(msg.batch_progress("complete", "Recognition complete"))

    async def _register(self, job: _RegisterJob) -> None:
        audio = pcm16le_to_float(job.pcm[: len(job.pcm) // 2 * 2])
        duration = len(audio) / SAMPLE_RATE
        audio = await self._denoise_whole(audio, Priority.LIVE)
        if not await self.engines.call("vad", lambda vad, a: vad.speech_regions(a), audio):
            raise ProtocolError(ErrorCode.EMBEDDING_FAILED,
                                "Failed to extract speaker embedding: no speech in the audio")
        embedding, engine_name = await self._embed(audio)
        # again: another client may have been faster
        owner = await self._check_registration(job.user_id)
        voiceprint = Voiceprint(speaker_id=job.user_id, name=job.user_id, embedding=embedding,
                                created_at=time.time(), audio_seconds=duration, engine=engine_name,
                                owner=owner)
        await self._store_call(lambda store, vp: store.put(vp), voiceprint)
        self._registered.add(job.user_id)
        self.stats["registrations"] += 1
        log.info("speaker_registered", user_id=job.user_id, audio_s=round(duration, 3),
                 owner=owner, admin=self.channel.credential.admin)
        self.send(msg.register_result(job.user_id, duration))

    # ------------------------------------------------------------------ speakers

    async def _check_registration(self, user_id: str) -> str:
        """Who may overwrite an existing voiceprint (``speaker_overwrite``), and the store's
        size. Returns the owner to record: the client's token scope; an admin replacing
        someone's voiceprint re-enrols it on the owner's behalf, so the owner stays."""
        def look(store: Any, uid: str) -> tuple[Voiceprint | None, int]:
            return store.get(uid), len(store.list())

        existing, count = await self._store_call(look, user_id)
        credential = self.channel.credential
        if existing is None:
            if count >= self.settings.speaker_max_voiceprints:
                raise ProtocolError(ErrorCode.PROCESSING, "The voiceprint store is full "
                                    f"({self.settings.speaker_max_voiceprints} speakers)")
            return credential.scope
        if not may_overwrite(self.settings.speaker_overwrite, existing.owner, credential,
                             registered_here=user_id in self._registered):
            raise ProtocolError(ErrorCode.PROCESSING, f"Speaker {user_id} is already registered: "
                                + ("this server does not let clients overwrite voiceprints"
                                   if self.settings.speaker_overwrite == "never" else
                                   "only the client that registered it (its token) or the admin "
                                   "token may overwrite it"))
        return existing.owner if credential.admin else credential.scope

    def _visible(self, voiceprint: Voiceprint) -> bool:
        """``speaker_list`` shows a client its own voiceprints (its token scope) and those
        registered without a token; the admin token sees every one."""
        credential = self.channel.credential
        return credential.admin or voiceprint.owner in ("", credential.scope)

    async def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.engines.call("voiceprints", fn, *args)
        except (EngineError, OSError) as exc:
            raise ProtocolError(ErrorCode.PROCESSING, f"voiceprint store failed: {exc}"[:300]) from None

    async def _voiceprint(self, user_id: str) -> Voiceprint:
        voiceprint = await self._store_call(lambda store, uid: store.get(uid), user_id)
        if voiceprint is None:
            raise ProtocolError(ErrorCode.SPEAKER_NOT_REGISTERED, f"Speaker {user_id} not registered")
        return voiceprint

    async def _verify(self, verification: Verification, audio: Audio) -> bool:
        """Send ``speaker_verify_result`` (or error 16); True when the speaker matched.

        A segment the speaker engine cannot embed (too little speech for a voiceprint) is a
        failed verification (``success: false``, score 0), not an error that loses the segment:
        only ``required`` decides whether its text is still recognised."""
        from asrhub.speakers import EngineMismatch, verify

        try:
            voiceprint = await self._voiceprint(verification.user_id)
        except ProtocolError as exc:
            self.error(exc)
            return False
        speaker = await self.engines.speaker()
        engine_name = speaker.name
        if voiceprint.engine != engine_name:
            self.error(ProtocolError(ErrorCode.SPEAKER_NOT_REGISTERED,
                                     _reenrol(verification.user_id, voiceprint, engine_name)))
            return False
        threshold = self.settings.speaker_threshold or float(speaker.default_threshold)
        try:
            embedding, _ = await self._embed(audio)
            outcome = verify(embedding, voiceprint, threshold)
            accepted, score = outcome.accepted, outcome.score
        except EngineMismatch:
            self.error(ProtocolError(ErrorCode.SPEAKER_NOT_REGISTERED,
                                     _reenrol(verification.user_id, voiceprint, engine_name)))
            return False
        except ProtocolError as exc:  # code 14: nothing to compare
            log.info("speaker_not_embedded", user_id=verification.user_id, reason=exc.message)
            accepted, score = False, 0.0
        self.stats["verifications_passed" if accepted else "verifications_failed"] += 1
        log.info("speaker_verified", user_id=verification.user_id, accepted=accepted,
                 score=round(score, 4), threshold=threshold)
        self.send(msg.verify_result(verification.user_id, accepted, score, threshold))
        return accepted

    async def _embed(self, audio: Audio) -> tuple[np.ndarray, str]:
        """The speaker embedding of ``audio`` and the engine's name; code 14 when there is none."""
        def embed(speaker: Any, pcm: Audio) -> tuple[np.ndarray, str]:
            return np.asarray(speaker.embed(pcm), dtype=np.float32), speaker.name

        try:
            embedding, name = await self.engines.call("speaker", embed, audio)
        except (ExecutorBusy, ExecutorClosed):
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure is the seed's code 14
            raise ProtocolError(ErrorCode.EMBEDDING_FAILED,
                                f"Failed to extract speaker embedding: {exc}"[:300]) from exc
        if embedding.ndim != 1 or not np.all(np.isfinite(embedding)) or not np.any(embedding):
            raise ProtocolError(ErrorCode.EMBEDDING_FAILED,
                                "Failed to extract speaker embedding: the engine returned no embedding")
        return embedding, name

    # ------------------------------------------------------------------ helpers

    async def _denoise_whole(self, audio: Audio, priority: Priority) -> Audio:
        if not self.settings.ns_enabled:
            return audio
        return await self.engines.call(
            "denoise", lambda d, a: d.denoise(a) if d is not None else a, audio, priority=priority)

    async def _transcribe(self, audio: Audio, language: str | None, priority: Priority) -> Any:
        return await self.engines.call(
            "asr", lambda asr, a, lang: asr.transcribe(a, language=lang), audio, language,
            priority=priority)
