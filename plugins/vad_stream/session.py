"""One vad_stream connection as an explicit state machine.

Modes (the seed's 工作模式): STREAMING (default: audio goes through the VAD, each segment is
filtered, optionally speaker-verified, then recognised), BATCH (audio is kept until
``batch_end``), REGISTERING (audio is kept until ``speaker_register_end``), and
BATCH_CANCELLED (a batch went over its size limit: audio is dropped until the client ends
or restarts it).

Work runs in two ordered stages so commands are answered while models run:

1. the VAD stage: queued streaming audio → (noise suppression) → :class:`Segmenter`, one
   executor call per wake-up, emitting ``speech_start`` / ``speech_end``;
2. the job stage: segments, batch jobs and registrations, one at a time in arrival order, so
   the results of one connection come out in order.

Both queues are bounded. The session never touches a socket: it gets a ``send`` callable and
its :class:`Services` (engines and the executor), so tests drive it with plain message lists.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from asrhub.audio import pcm16le_to_float, resample
from asrhub.engine import (
    SAMPLE_RATE,
    ASREngine,
    Audio,
    Denoiser,
    DenoiseStream,
    SpeakerEngine,
    VADEngine,
    Voiceprint,
    VoiceprintStore,
)
from asrhub.executor import Priority

from . import messages as msg
from .messages import Command, ErrorCode, ProtocolError
from .quality import segment_rejection, text_rejection
from .segmenter import Segmenter, SegmentEvent, SpeechEnded, SpeechStarted
from .settings import VadStreamSettings

log = structlog.get_logger("asrhub.vad_stream")

Send = Callable[[dict[str, Any]], None]


class Mode(enum.Enum):
    STREAMING = "streaming"
    BATCH = "batch_receiving"
    BATCH_CANCELLED = "batch_cancelled"
    REGISTERING = "registering"


@dataclass
class Services:
    """What a session needs from the hub: engines (loaded on first use) and the executor."""

    run: Callable[..., Awaitable[Any]]  # executor.run(fn, *args, priority=, engine=)
    asr: Callable[[], Awaitable[ASREngine]]
    vad: Callable[[], Awaitable[VADEngine]]
    speaker: Callable[[], Awaitable[SpeakerEngine]]
    voiceprints: Callable[[], Awaitable[VoiceprintStore]]
    denoiser: Callable[[], Awaitable[Denoiser | None]]

    @classmethod
    def from_hub(cls, hub: Any, settings: VadStreamSettings) -> Services:
        assert hub.executor is not None, "the hub has no executor (start a server or make_executor())"
        return cls(
            run=hub.executor.run,
            asr=lambda: hub.asr(settings.asr_engine or None),
            vad=hub.vad,
            speaker=hub.speaker,
            voiceprints=hub.voiceprints,
            denoiser=lambda: hub.denoiser(settings.ns_engine or None),
        )


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


PIN_LANGUAGE_AFTER_S = 2.0
_FLUSH = object()  # in the audio queue: close the open segment (leaving streaming mode)


def _reenrol(user_id: str, voiceprint: Voiceprint, speaker: SpeakerEngine) -> str:
    return (f"Speaker {user_id} was registered with the {voiceprint.engine!r} speaker engine; "
            f"register again to verify with {speaker.name!r}")


def _language_code(value: str) -> str | None:
    """A settings/command language → what the engine takes (None = detect)."""
    code = msg.parse_language(value) if value else "auto"
    return None if code == "auto" else code


class VadStreamSession:
    def __init__(self, settings: VadStreamSettings, services: Services, send: Send) -> None:
        self.settings = settings
        self.services = services
        self._send = send
        self.mode = Mode.STREAMING
        self._default_verification = (
            Verification(settings.speaker_verification_default_user.strip(), True)
            if settings.speaker_verification_required else None)
        self.verification = self._default_verification
        # streaming
        self._audio: collections.deque[Any] = collections.deque()
        self._audio_samples = 0  # queued, not yet through the VAD
        self._audio_wake = asyncio.Event()
        self._vad_idle = asyncio.Event()
        self._vad_idle.set()
        self._backlog_reported = False
        self._carry = b""  # odd byte of a PCM sample split across messages
        self._segmenter: Segmenter | None = None
        self._denoise_stream: DenoiseStream | None = None
        self._stream_language: str | None = _language_code(settings.language)
        self._detect_language = self._stream_language is None
        self.segment_id = 0
        # batch / registration buffers
        self._buffer = bytearray()
        self._buffer_rate = SAMPLE_RATE
        self._buffer_language: str | None = None
        self._buffer_reported = 0  # bytes at the last progress message
        self._register_user: str | None = None
        # jobs
        self._jobs: asyncio.Queue[Any] = asyncio.Queue(settings.max_pending_jobs)
        self._tasks: list[asyncio.Task[None]] = []
        # accounting (the connection's summary line)
        self.audio_seconds = 0.0
        self.processing_seconds = 0.0
        self.stats: collections.Counter[str] = collections.Counter()
        self.closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._start_tasks()

    def _start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._vad_loop(), name="vad_stream-vad"),
                       loop.create_task(self._job_loop(), name="vad_stream-jobs")]

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # gather (not a loop of awaits): if *this* task is cancelled meanwhile, that still raises.
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("vad_stream_task_failed", error=repr(outcome))

    async def close(self) -> None:
        """The connection is gone: stop all work (results would have no one to go to)."""
        self.closed = True
        await self._stop_tasks()

    async def drain(self, timeout: float = 120.0) -> None:
        """Wait until all audio and jobs received so far are processed (tests, clean shutdown)."""
        async def idle() -> None:
            while True:
                await self._vad_idle.wait()
                await self._jobs.join()
                if self._vad_idle.is_set() and not self._audio and self._jobs.empty():
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(idle(), timeout)

    @property
    def is_speeching(self) -> bool:
        return self._segmenter is not None and self._segmenter.in_speech

    # ------------------------------------------------------------------ input

    async def on_text(self, text: str) -> None:
        try:
            command = msg.parse_command(text)
            await getattr(self, f"_cmd_{command.name}")(command)
        except ProtocolError as exc:
            self.error(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection survives, the client is told
            log.exception("vad_stream_command_failed")
            self.error(ErrorCode.PROCESSING, f"{exc.__class__.__name__}: {exc}")

    async def on_binary(self, data: bytes) -> None:
        if not data:
            return
        if self.mode is Mode.STREAMING:
            self._feed_streaming(data)
        elif self.mode is Mode.BATCH:
            self._feed_batch(data)
        elif self.mode is Mode.REGISTERING:
            self._feed_registration(data)
        # BATCH_CANCELLED: dropped until batch_end / batch_start / reset

    def _feed_streaming(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if len(data) % 2:
            data, self._carry = data[:-1], data[-1:]
        if not data:
            return
        pcm = pcm16le_to_float(data)
        limit = int(self.settings.max_backlog_s * SAMPLE_RATE)
        if self._audio_samples + len(pcm) > limit:
            if not self._backlog_reported:
                self._backlog_reported = True
                self.error(ErrorCode.PROCESSING, f"audio backlog over {self.settings.max_backlog_s:g} s: "
                           "the server cannot keep up; audio is dropped")
            return
        if self._audio_samples < limit // 2:
            self._backlog_reported = False
        self.audio_seconds += len(pcm) / SAMPLE_RATE
        self._audio.append(pcm)
        self._audio_samples += len(pcm)
        self._vad_idle.clear()
        self._audio_wake.set()

    def _feed_batch(self, data: bytes) -> None:
        limit = int(self.settings.batch_max_s * self._buffer_rate) * 2
        if len(self._buffer) + len(data) > limit:
            self._buffer = bytearray()
            self.mode = Mode.BATCH_CANCELLED
            self.error(ErrorCode.PROCESSING, f"Audio duration exceeds maximum of "
                       f"{self.settings.batch_max_s:g}s: the batch was cancelled")
            return
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
        if not self.closed:
            self._send(message)

    def error(self, code: ErrorCode | int, message: str) -> None:
        self.stats[f"error_{int(code)}"] += 1
        log.info("vad_stream_error", code=int(code), message=message)
        self.send(msg.error(code, message))

    # ------------------------------------------------------------------ commands

    async def _cmd_ping(self, command: Command) -> None:
        self.send(msg.pong())

    async def _cmd_reset(self, command: Command) -> None:
        await self._stop_tasks()
        self._audio.clear()
        self._audio_samples = 0
        self._vad_idle.set()
        self._audio_wake.clear()
        self._jobs = asyncio.Queue(self.settings.max_pending_jobs)
        self._segmenter = None  # a fresh VAD stream on the next audio
        self._denoise_stream = None
        self._carry = b""
        self._buffer = bytearray()
        self._register_user = None
        self.mode = Mode.STREAMING
        self.segment_id = 0
        self._stream_language = _language_code(self.settings.language)
        self.verification = self._default_verification
        self._start_tasks()
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
        language = self._buffer_language
        await self._jobs.put(_BatchJob(pcm, rate, language))

    async def _cmd_speaker_register_start(self, command: Command) -> None:
        if command.user_id is None:
            raise ProtocolError(ErrorCode.REGISTER_MISSING_USER, "Missing user_id parameter")
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
        store = await self.services.voiceprints()
        voiceprints = await self.services.run(store.list)
        self.send(msg.speaker_list([
            {"user_id": vp.speaker_id, "dimension": int(len(vp.embedding)),
             "registered_at": int(vp.created_at)}
            for vp in voiceprints]))

    def _enter(self, mode: Mode) -> None:
        """Switch modes; leaving streaming closes a speech segment still open."""
        if self.mode is Mode.STREAMING and mode is not Mode.STREAMING \
                and (self._segmenter is not None or self._audio):
            self._audio.append(_FLUSH)
            self._vad_idle.clear()
            self._audio_wake.set()
        self.mode = mode
        self._carry = b""
        self._buffer = bytearray()
        self._buffer_reported = 0
        if mode is not Mode.REGISTERING:
            self._register_user = None

    # ------------------------------------------------------------------ stage 1: VAD

    async def _vad_loop(self) -> None:
        while True:
            if not self._audio:
                self._vad_idle.set()
                await self._audio_wake.wait()
            self._audio_wake.clear()
            while self._audio:
                item = self._audio.popleft()
                try:
                    if item is _FLUSH:
                        if self._segmenter is not None:
                            await self._segment_events(await self._run(self._segmenter.finish))
                        continue
                    chunks = [item]
                    while self._audio and self._audio[0] is not _FLUSH:
                        chunks.append(self._audio.popleft())
                    pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
                    try:
                        segmenter = await self._ensure_segmenter()
                        events = await self._run(self._vad_step, segmenter, self._denoise_stream, pcm)
                    finally:
                        self._audio_samples -= len(pcm)
                    await self._segment_events(events)
                except asyncio.CancelledError:
                    raise
                except ProtocolError as exc:
                    self.error(exc.code, exc.message)
                except Exception as exc:  # noqa: BLE001 - report, start a fresh VAD stream
                    log.exception("vad_stream_vad_failed")
                    self._segmenter = None
                    self._denoise_stream = None
                    self.error(ErrorCode.PROCESSING, f"VAD failed: {exc.__class__.__name__}: {exc}")

    async def _ensure_segmenter(self) -> Segmenter:
        if self._segmenter is None:
            s = self.settings
            vad = await self.services.vad()
            if vad is None:
                raise ProtocolError(ErrorCode.PROCESSING, "no VAD engine is configured ([engines] vad)")
            stream = await self._run(vad.open_stream)
            if s.ns_enabled:
                denoiser = await self.services.denoiser()
                self._denoise_stream = await self._run(denoiser.open_stream) if denoiser else None
            self._segmenter = Segmenter(
                stream, frame_samples=s.frame_samples, speech_frames=s.vad_speech_frames,
                silence_frames=s.vad_silence_frames,
                prefix_samples=int(s.prefix_padding_ms * SAMPLE_RATE / 1000),
                history_samples=int(s.buffer_max_s * SAMPLE_RATE),
                max_segment_samples=int(s.max_segment_s * SAMPLE_RATE))
        return self._segmenter

    @staticmethod
    def _vad_step(segmenter: Segmenter, denoise: DenoiseStream | None, pcm: Audio) -> list[SegmentEvent]:
        if denoise is not None:
            pcm = denoise.process(pcm)
        return segmenter.accept(pcm)

    async def _segment_events(self, events: list[SegmentEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self.send(msg.speech_start())
                continue
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
                self.error(exc.code, exc.message)
            except Exception as exc:  # noqa: BLE001 - the connection survives, the client is told
                log.exception("vad_stream_job_failed", job=type(job).__name__)
                self.error(ErrorCode.PROCESSING, f"Recognition failed: {exc.__class__.__name__}: {exc}")
            finally:
                jobs.task_done()

    async def _recognize_segment(self, job: _SegmentJob) -> None:
        audio = job.segment.audio
        if job.verification is not None:
            verified = await self._verify(job.verification, audio)
            if not verified and job.verification.required:
                self.stats["segments_rejected_speaker"] += 1
                return
        language = self._stream_language
        transcript = await self._transcribe(audio, language, Priority.LIVE)
        if (self._detect_language and self._stream_language is None and transcript.language
                and len(audio) >= PIN_LANGUAGE_AFTER_S * SAMPLE_RATE):
            # Detect once per session, not per segment; a short first word is not enough.
            self._stream_language = transcript.language
        text = transcript.text.strip()
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

        def prepare() -> Audio:
            return resample(pcm16le_to_float(job.pcm[: samples * 2]), job.sample_rate)

        audio = await self._run(prepare, priority=Priority.BATCH)
        audio = await self._denoise_whole(audio, Priority.BATCH)
        language = job.language if job.language is not None else self.settings.language
        transcript = await self._transcribe(audio, _language_code(language), Priority.BATCH)
        self.stats["batches"] += 1
        self.send(msg.batch_result(transcript.text.strip(), samples, job.sample_rate))
        self.send(msg.batch_progress("complete", "Recognition complete"))

    async def _register(self, job: _RegisterJob) -> None:
        audio = pcm16le_to_float(job.pcm[: len(job.pcm) // 2 * 2])
        duration = len(audio) / SAMPLE_RATE
        audio = await self._denoise_whole(audio, Priority.LIVE)
        vad = await self.services.vad()
        if vad is not None and not await self._run(vad.speech_regions, audio):
            raise ProtocolError(ErrorCode.EMBEDDING_FAILED,
                                "Failed to extract speaker embedding: no speech in the audio")
        speaker = await self.services.speaker()
        embedding = await self._embed(speaker, audio)
        store = await self.services.voiceprints()
        voiceprint = Voiceprint(speaker_id=job.user_id, name=job.user_id, embedding=embedding,
                                created_at=time.time(), audio_seconds=duration, engine=speaker.name)
        await self._run(store.put, voiceprint)
        self.stats["registrations"] += 1
        log.info("speaker_registered", user_id=job.user_id, audio_s=round(duration, 3))
        self.send(msg.register_result(job.user_id, duration))

    # ------------------------------------------------------------------ speakers

    async def _voiceprint(self, user_id: str) -> Voiceprint:
        store = await self.services.voiceprints()
        voiceprint = await self._run(store.get, user_id)
        if voiceprint is None:
            raise ProtocolError(ErrorCode.SPEAKER_NOT_REGISTERED, f"Speaker {user_id} not registered")
        return voiceprint

    async def _verify(self, verification: Verification, audio: Audio) -> bool:
        """Send ``speaker_verify_result`` (or error 16); True when the speaker matched."""
        # Imported here: streaming ASR works without the speakers plugin installed.
        from asrhub_plugins.speakers.matching import EngineMismatch, verify

        try:
            voiceprint = await self._voiceprint(verification.user_id)
        except ProtocolError as exc:
            self.error(exc.code, exc.message)
            return False
        speaker = await self.services.speaker()
        if voiceprint.engine != speaker.name:
            self.error(ErrorCode.SPEAKER_NOT_REGISTERED, _reenrol(verification.user_id, voiceprint, speaker))
            return False
        embedding = await self._embed(speaker, audio)
        threshold = self.settings.speaker_threshold or speaker.default_threshold
        try:
            outcome = verify(embedding, voiceprint, threshold)
        except EngineMismatch:
            self.error(ErrorCode.SPEAKER_NOT_REGISTERED, _reenrol(verification.user_id, voiceprint, speaker))
            return False
        self.stats["verifications_passed" if outcome.accepted else "verifications_failed"] += 1
        log.info("speaker_verified", user_id=verification.user_id, accepted=outcome.accepted,
                 score=round(outcome.score, 4), threshold=threshold)
        self.send(msg.verify_result(verification.user_id, outcome.accepted, outcome.score, threshold))
        return outcome.accepted

    async def _embed(self, speaker: SpeakerEngine, audio: Audio) -> np.ndarray:
        try:
            embedding = np.asarray(await self._run(speaker.embed, audio), dtype=np.float32)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure is the seed's code 14
            raise ProtocolError(ErrorCode.EMBEDDING_FAILED,
                                f"Failed to extract speaker embedding: {exc}") from exc
        if embedding.ndim != 1 or not np.all(np.isfinite(embedding)) or not np.any(embedding):
            raise ProtocolError(ErrorCode.EMBEDDING_FAILED,
                                "Failed to extract speaker embedding: the engine returned no embedding")
        return embedding

    # ------------------------------------------------------------------ helpers

    async def _denoise_whole(self, audio: Audio, priority: Priority) -> Audio:
        if not self.settings.ns_enabled:
            return audio
        denoiser = await self.services.denoiser()
        if denoiser is None:
            return audio
        return await self._run(denoiser.denoise, audio, priority=priority)

    async def _transcribe(self, audio: Audio, language: str | None, priority: Priority) -> Any:
        asr = await self.services.asr()
        return await self._run(asr.transcribe, audio, language=language, priority=priority,
                               engine=getattr(asr, "name", None))

    async def _run(self, fn: Callable[..., Any], *args: Any, priority: Priority = Priority.LIVE,
                   engine: str | None = None, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.services.run(fn, *args, priority=priority, engine=engine, **kwargs)
        finally:
            self.processing_seconds += time.perf_counter() - started
