"""One FunASR runtime connection: an explicit state machine, no sockets.

A connection carries any number of inputs, one after another (FunASR's client opens one per
file; the HTML5 page one per recording)::

    IDLE --config message / {"is_speaking": true}--> STREAMING (online, 2pass) | COLLECTING (offline)
    STREAMING | COLLECTING --{"is_speaking": false}--> (last results, acknowledgement) --> IDLE
    STREAMING --recogniser failure / server busy--> FAILED --{"is_speaking": false}--> IDLE
    any --disconnect--> CLOSED

- ``online``: audio goes to the hub's ASR engine stream (VAD-segmented, :class:`StreamPump`);
  its hypotheses become append-only ``online`` pieces (:mod:`.pieces`), an utterance's last
  piece with ``is_final`` true.
- ``2pass``: the same stream gives ``2pass-online`` pieces while someone speaks; each
  utterance the VAD closes gets one ``2pass-offline`` result with the utterance decoded again
  as a whole. The engine's stream final is that offline decode (Whisper decodes the whole
  utterance; the funasr engine decodes it again with its offline model, FunASR's own 2pass).
  With hotwords and an engine whose ``transcribe`` takes a ``prompt``, the utterance audio is
  decoded once more with the hotwords as prompt and that text is sent.
- ``offline``: the input's bytes are collected (bounded) and decoded once at its end (PCM at
  ``audio_fs``, or a container file through the hub's audio edge); one ``offline`` result.

Problems with an input (bad audio, a busy server, a failing engine) are sent at once as
error envelopes and again in the input's acknowledgement (``"is_final": false`` with
``"error"``), which is where FunASR's client looks. Unusable configuration closes the
connection (the error envelope carries ``"is_end": true`` first).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog

from asrhub.audio import AudioError, PcmStream, decode_bytes
from asrhub.container_stream import sniff_container
from asrhub.engine import SAMPLE_RATE, Audio, Hypothesis, Transcript
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority
from asrhub.protocol import Channel, CloseInfo, ProtocolError, Session
from asrhub.streaming import BacklogFull, LiveRecognizer, StreamPump

from . import messages as m
from .pieces import Increments, Joiner, units
from .settings import FunASRRuntimeSettings

log = structlog.get_logger("asrhub.funasr_runtime")

_PUNCTUATION = ".,!?;:，。？！、；："
# The engine stream gets audio in pieces of at least this much (FunASR's client sends 60 ms).
FEED_CHUNK_S = 0.25


class Recogniser(Protocol):
    """What a session needs from the hub (the handler builds it from the protocol context):
    live streams on the shared engines, and whole-recording decodes."""

    live: LiveRecognizer

    async def transcribe(self, audio: Audio, *, language: str | None, word_timestamps: bool,
                         prompt: str | None, priority: Priority) -> Transcript: ...

    async def accepts_prompt(self) -> bool: ...


class State(enum.Enum):
    IDLE = "idle"  # no input open: before the first message, or after an input's end
    STREAMING = "streaming"  # an online / 2pass input is open
    COLLECTING = "collecting"  # an offline input is open: its bytes are collected
    FAILED = "failed"  # an input is open but cannot be recognised: audio is dropped
    CLOSED = "closed"


@dataclass
class _Input:
    """The open input's state."""

    config: m.InputConfig
    errors: list[str]
    started: float
    pump: StreamPump | None = None
    pcm: PcmStream | None = None  # PCM at audio_fs → 16 kHz (keeps an odd byte for later)
    pcm_bytes: int = 0
    collected: bytearray | None = None
    overflow: bool = False
    frames: int = 0
    told_not_audio: bool = False


class FunASRRuntimeSession(Session):
    def __init__(self, channel: Channel, settings: FunASRRuntimeSettings,
                 recogniser: Recogniser,
                 observe_final_latency: Callable[[float], None] | None = None) -> None:
        self.channel = channel
        self.settings = settings
        self.recogniser = recogniser
        self.observe_final_latency = observe_final_latency
        self.state = State.IDLE
        self.config = m.InputConfig()
        self.input: _Input | None = None
        self.inputs = 0
        self.results_sent = 0
        self.modes: set[str] = set()
        self.hotwords_used = False
        self._told_no_input = False
        self._online = Increments()
        self._online_track = Joiner()
        self._offline_track = Joiner()

    # ------------------------------------------------------------------ messages

    async def on_text(self, text: str) -> None:
        try:
            message = m.parse_message(text)
        except ProtocolError as err:
            self._report(err)
            return
        if self.state is State.CLOSED:
            return
        if self.input is None:
            if message.changes or message.is_speaking:  # ({} alone opens nothing)
                try:
                    config = message.apply(self.config)
                except ProtocolError as err:
                    self._report(err)
                    return
                self.config = config
                await self._open()
            if message.is_speaking is False:
                await self._end(message.is_end)
            return
        try:
            changed = bool(message.changes) and message.apply(self.config) != self.config
        except ProtocolError as err:
            self._report(err)
            return
        if changed:
            self._report(ProtocolError(
                m.BAD_CONFIG, "the configuration of an open input cannot change; end it with "
                "{\"is_speaking\": false} and send the new configuration"))
        if message.is_speaking is False:
            await self._end(message.is_end)

    async def on_binary(self, data: bytes) -> None:
        current = self.input
        if current is None or self.state is State.CLOSED:
            if self.state is not State.CLOSED and not self._told_no_input:
                self._told_no_input = True
                self._report(ProtocolError(
                    m.NO_INPUT, "audio before the configuration message (or after the input "
                    "ended) is dropped: send {\"mode\": ..., \"is_speaking\": true} first"))
            return
        if self.state is State.FAILED or not data:
            return
        current.frames += 1
        if (not current.told_not_audio and current.config.is_pcm
                and (what := _not_pcm(data, first=current.frames == 1)) is not None):
            current.told_not_audio = True
            self._report(ProtocolError(m.BAD_AUDIO, f"a binary message is {what}, not PCM audio; "
                                       "it was dropped"))
            return
        if self.state is State.COLLECTING:
            self._collect(current, data)
        else:
            await self._stream(current, data)

    async def on_close(self, info: CloseInfo) -> None:
        current = self.input
        if info.shutdown and current is not None and self.state in (State.STREAMING,
                                                                    State.COLLECTING):
            # Results for the audio already received, then the input ends unfinished.
            current.errors.append("server shutting down: the input was cut short")
            await self._end(True)
        self.state = State.CLOSED
        await self._release()

    def summary(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "results": self.results_sent,
                "modes": ",".join(sorted(self.modes)), "hotwords": self.hotwords_used}

    # ------------------------------------------------------------------ inputs

    async def _open(self) -> None:
        config = self.config
        self.inputs += 1
        self.modes.add(config.mode)
        self._told_no_input = False
        self._online, self._online_track, self._offline_track = Increments(), Joiner(), Joiner()
        current = self.input = _Input(config=config, errors=[], started=time.monotonic())
        if config.mode == "offline":
            current.collected = bytearray()
            self.state = State.COLLECTING
            return
        self.state = State.STREAMING
        current.pcm = PcmStream(config.audio_fs, 2, 1)
        try:
            # The pump may hold a little more than the backlog at which reading pauses.
            pump = await self.recogniser.live.open(
                self._on_hypotheses, language=self._language(config),
                max_backlog_s=self.settings.max_backlog_s * 1.5 + 2,
                on_error=self._engine_failed, min_chunk_s=FEED_CHUNK_S)
        except Exception as exc:  # noqa: BLE001 - told to the client; the input fails
            self._engine_failed(exc)
            return
        if self.input is not current:  # the connection closed meanwhile
            await pump.close()
            return
        current.pump = pump

    async def _end(self, acknowledge: bool) -> None:
        current = self.input
        if current is None:  # an end with no input open: nothing to recognise
            if acknowledge:
                self._send(m.acknowledgement(self.config, []))
            return
        started = time.monotonic()
        if current.pcm is not None and current.pcm_bytes % 2:
            current.errors.append("PCM int16 needs an even number of bytes: the last byte was dropped")
        if self.state is State.STREAMING and current.pump is not None:
            if current.pcm is not None:
                self._feed(current, current.pcm.flush())
            try:
                await current.pump.finish()
            except Exception as exc:  # noqa: BLE001 - the acknowledgement reports it
                self._engine_failed(exc)
            if self.observe_final_latency is not None:
                self.observe_final_latency(time.monotonic() - started)
        elif self.state is State.COLLECTING:
            await self._recognise_collected(current)
        if acknowledge and self.state is not State.CLOSED:
            self._send(m.acknowledgement(current.config, current.errors))
        await self._release()
        if self.state is not State.CLOSED:
            self.state = State.IDLE

    async def _release(self) -> None:
        current, self.input = self.input, None
        if current is not None and current.pump is not None:
            pump, current.pump = current.pump, None
            await pump.close()
            self.audio_seconds += pump.audio_seconds
            self.processing_seconds += pump.processing_seconds

    # ------------------------------------------------------------------ streaming

    async def _stream(self, current: _Input, data: bytes) -> None:
        assert current.pcm is not None
        current.pcm_bytes += len(data)
        self._feed(current, current.pcm.convert(data))
        pump = current.pump
        # Backpressure: stop reading this socket while too much audio waits for the engine.
        while (pump is not None and self.input is current
               and pump.backlog_seconds >= self.settings.max_backlog_s):
            try:
                await pump.drain()
            except Exception:  # noqa: BLE001 - reported by the next feed or at the end
                return

    def _feed(self, current: _Input, pcm: Audio) -> None:
        if current.pump is None or len(pcm) == 0:
            return
        try:
            current.pump.feed(np.asarray(pcm, dtype=np.float32))
        except BacklogFull as exc:
            self._report(ProtocolError(m.BACKLOG_FULL, f"audio dropped: {exc}"))
        except Exception as exc:  # noqa: BLE001 - the engine failed on earlier audio
            self._engine_failed(exc)

    async def _on_hypotheses(self, hyps: list[Hypothesis]) -> None:
        current = self.input
        if current is None:
            return
        config = current.config
        for hyp in hyps:
            if config.mode == "online":
                if hyp.is_final:
                    # Sent even when the partials covered the sentence: it marks its end.
                    shown = bool(self._online.sent)
                    piece = self._online_track.piece(self._online.final(hyp.text))
                    if piece or shown:
                        self._send(m.result(config, "online", piece, is_final=True))
                else:
                    piece = self._online_track.piece(self._online.partial(hyp.text))
                    if piece:
                        self._send(m.result(config, "online", piece, is_final=False))
            elif not hyp.is_final:
                piece = self._online_track.piece(self._online.partial(hyp.text))
                if piece:
                    self._send(m.result(config, "2pass-online", piece, is_final=False))
            else:
                await self._second_pass(current, hyp)

    async def _second_pass(self, current: _Input, hyp: Hypothesis) -> None:
        config = current.config
        text = hyp.text.strip()
        if config.prompt and hyp.audio is not None and len(hyp.audio):
            if await self.recogniser.accepts_prompt():
                try:
                    transcript = await self.recogniser.transcribe(
                        hyp.audio, language=self._language(config), word_timestamps=False,
                        prompt=config.prompt, priority=Priority.LIVE)
                except Exception as exc:  # noqa: BLE001 - the stream's own decode stands
                    log.warning("hotword_decode_failed", error=f"{exc.__class__.__name__}: {exc}")
                else:
                    text = transcript.text.strip()
                    self.hotwords_used = True
        shown = bool(self._online.sent)
        self._online.final(text)
        piece = self._offline_track.piece(text)
        self._online_track.follow(self._offline_track)
        if not piece and not shown:
            return  # nothing was said and nothing was shown
        sentence = {"text_seg": " ".join(u.rstrip(_PUNCTUATION) for u in units(text)),
                    "punc": text[-1] if text and text[-1] in _PUNCTUATION else "",
                    "start": round(hyp.start * 1000), "end": round(hyp.end * 1000),
                    "ts_list": []}
        self._send(m.result(config, "2pass-offline", piece, is_final=True,
                            stamp_sents=[sentence] if text else None))

    # ------------------------------------------------------------------ offline

    def _collect(self, current: _Input, data: bytes) -> None:
        assert current.collected is not None
        if current.overflow:
            return
        if len(current.collected) + len(data) > self.settings.max_offline_bytes:
            current.overflow = True
            self._report(ProtocolError(
                m.INPUT_TOO_LARGE, f"the input is larger than {self.settings.max_offline_bytes} "
                "bytes; the rest is dropped and the part received is recognised"))
            return
        current.collected += data

    async def _recognise_collected(self, current: _Input) -> None:
        config = current.config
        assert current.collected is not None
        data, current.collected = bytes(current.collected), None
        if not data:
            self._send(m.result(config, "offline", "", is_final=True))
            return
        executor = self.recogniser.live.executor
        try:
            if config.is_pcm:
                if len(data) % 2:
                    current.errors.append("PCM int16 needs an even number of bytes: the last "
                                          "byte was dropped")
                audio = await executor.run(_pcm_audio, data, config.audio_fs,
                                           priority=Priority.BATCH)
            else:
                audio = await executor.run(decode_bytes, data,
                                           name=f"{config.wav_name}.{config.wav_format}",
                                           priority=Priority.BATCH)
        except AudioError as exc:
            self._report(ProtocolError(m.BAD_AUDIO, f"{config.wav_format} input: {exc}"))
            return
        except (ExecutorBusy, ExecutorClosed) as exc:
            self._engine_failed(exc)
            return
        duration = len(audio) / SAMPLE_RATE
        started = time.perf_counter()
        try:
            prompt = config.prompt if await self.recogniser.accepts_prompt() else None
            transcript = await self.recogniser.transcribe(
                audio, language=self._language(config),
                word_timestamps=self.settings.offline_timestamps, prompt=prompt,
                priority=Priority.BATCH)
        except Exception as exc:  # noqa: BLE001 - the acknowledgement reports it
            self._engine_failed(exc)
            return
        finally:
            self.audio_seconds += duration
            self.processing_seconds += time.perf_counter() - started
        self.hotwords_used |= bool(prompt)
        timestamp, sentences = _times(transcript)
        self._send(m.result(config, "offline", transcript.text.strip(), is_final=True,
                            timestamp=timestamp, stamp_sents=sentences))

    # ------------------------------------------------------------------ helpers

    def _language(self, config: m.InputConfig) -> str | None:
        return config.language or self.settings.language or None

    def _send(self, message: dict[str, Any]) -> None:
        if "text" in message:
            self.results_sent += 1
        self.channel.send_json(message)

    def _report(self, err: ProtocolError) -> None:
        """Send the error envelope; an open input also lists it in its acknowledgement."""
        current = self.input
        if current is not None:
            err.extra.setdefault("wav_name", current.config.wav_name)
            if err.message not in current.errors:
                current.errors.append(err.message)
        self.channel.send_error(err)

    def _engine_failed(self, exc: BaseException) -> None:
        if self.state is State.FAILED:
            return
        if isinstance(exc, ExecutorBusy):
            err = ProtocolError(m.SERVER_BUSY, "the server is too busy to recognise this input; "
                                "try again shortly")
        elif isinstance(exc, ExecutorClosed):
            err = ProtocolError(m.SERVER_BUSY, "the server is shutting down")
        else:
            log.error("recognition_failed", error=f"{exc.__class__.__name__}: {exc}")
            err = ProtocolError(m.ENGINE_ERROR, f"recognition failed: {exc.__class__.__name__}: "
                                f"{exc}"[:300])
        if self.state is State.STREAMING:
            self.state = State.FAILED
        self._report(err)


def _pcm_audio(data: bytes, rate: int) -> Audio:
    """A whole offline PCM input → 16 kHz float32 (through the same edge as streams)."""
    stream = PcmStream(rate, 2, 1)
    return np.concatenate([stream.convert(data), stream.flush()])


def _not_pcm(data: bytes, *, first: bool) -> str | None:
    """Why a binary message plainly is not raw PCM (None if it may be)."""
    head = bytes(data[:16])
    if first and sniff_container(head) is not None:
        return f"a {sniff_container(head)} container (declare its wav_format in offline mode)"
    stripped = head.lstrip()
    if len(data) >= 8 and stripped[:1] in (b"{", b"[") and bytes(data[:256]).isascii() and all(
            32 <= c < 127 or c in (9, 10, 13) for c in data[:256]):
        return "JSON text (send JSON messages as text frames)"
    return None


def _times(transcript: Transcript) -> tuple[list[list[int]] | None, list[dict[str, Any]] | None]:
    """FunASR's ``timestamp`` (ms per word/token) and ``stamp_sents`` (per segment), from the
    engine's word timestamps; None when it gave none."""
    stamps: list[list[int]] = []
    sentences: list[dict[str, Any]] = []
    for segment in transcript.segments:
        if not segment.words:
            continue
        ts_list = [[round(w.start * 1000), round(w.end * 1000)] for w in segment.words]
        stamps += ts_list
        text = segment.text.strip()
        sentences.append({
            "text_seg": " ".join(w.word.strip().rstrip(_PUNCTUATION) for w in segment.words),
            "punc": text[-1] if text and text[-1] in _PUNCTUATION else "",
            "start": round(segment.start * 1000), "end": round(segment.end * 1000),
            "ts_list": ts_list})
    return stamps or None, sentences or None

