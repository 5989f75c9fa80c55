"""The Realtime transcription session: a socket-free state machine on the hub's streaming path.

With ``turn_detection`` (server VAD, the default) the audio goes to the engine's streaming
session (``open_stream(language=, vad=)``, driven by :class:`asrhub.streaming.StreamPump`), and
the hub's VAD segments it. A thin tap on the VAD stream reports its start/end events in order
with the engine's hypotheses, which become::

    VAD start  -> input_audio_buffer.speech_started (a new item)
    VAD end    -> input_audio_buffer.speech_stopped, input_audio_buffer.committed
    partial    -> conversation.item.input_audio_transcription.delta (text that extends what
                  was sent; a partial that rewrites earlier words waits for the final)
    final      -> the last delta, then ...transcription.completed (the whole transcript)

An ended item that produced no words is completed with an empty transcript. With
``turn_detection: null`` the client decides: ``input_audio_buffer.commit`` transcribes what was
appended since the last commit as one item. ``input_audio_buffer.clear`` drops uncommitted audio.

States::

    IDLE (no audio yet) --append--> LISTENING --update that changes model/language/format/
    turn detection--> (finals flushed) IDLE ...           any --disconnect--> CLOSED
"""

from __future__ import annotations

import asyncio
import enum
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from asrhub.engine import (
    SAMPLE_RATE,
    ASRStream,
    Audio,
    EngineError,
    Hypothesis,
    VADEvent,
    VADStream,
)
from asrhub.executor import ExecutorBusy, ExecutorClosed, Priority
from asrhub.protocol import Channel, CloseInfo, ProtocolError, Session
from asrhub.streaming import BacklogFull, StreamPump

from . import realtime_messages as rm

if TYPE_CHECKING:
    from asrhub.protocol import ProtocolContext

    from .service import AudioService

log = structlog.get_logger("asrhub.openai_api.realtime")

MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less than 100 ms of audio


class State(enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    CLOSED = "closed"


class VADTap:
    """A VAD stream that also keeps its events, in stream samples (the count goes on across
    :meth:`reset`, as the ASR stream's own clock does)."""

    def __init__(self, inner: VADStream) -> None:
        self.inner = inner
        self.events: list[VADEvent] = []
        self._fed = 0
        self._base = 0
        self._lock = threading.Lock()

    def accept(self, pcm: Audio) -> list[VADEvent]:
        found = self.inner.accept(pcm)
        self._keep(found)
        self._fed += len(pcm)
        return found

    def finish(self) -> list[VADEvent]:
        found = self.inner.finish()
        self._keep(found)
        return found

    def reset(self) -> None:
        self.inner.reset()
        self._base = self._fed

    def take(self) -> list[VADEvent]:
        with self._lock:
            out, self.events = self.events, []
        return out

    def _keep(self, found: list[VADEvent]) -> None:
        with self._lock:
            self.events += [VADEvent(e.kind, e.sample + self._base) for e in found]

    def __getattr__(self, name: str) -> Any:  # silence_since, speech_pad, ... of the real VAD
        return getattr(self.inner, name)


class TappedStream:
    """The engine's stream; each call returns the VAD events it caused, then its hypotheses."""

    def __init__(self, stream: ASRStream, tap: VADTap) -> None:
        self.stream = stream
        self.tap = tap

    def accept(self, pcm: Audio) -> list[Any]:
        hyps = self.stream.accept(pcm)
        return [*self.tap.take(), *hyps]

    def finish(self) -> list[Any]:
        hyps = self.stream.finish()
        return [*self.tap.take(), *hyps]

    def reset(self) -> None:
        self.stream.reset()
        self.tap.take()


@dataclass
class Item:
    item_id: str
    start: int  # stream sample where speech began
    end: int | None = None  # where it ended (None: still speaking)
    utterance: int | None = None  # the engine's utterance number once it produced text
    sent: str = ""  # text already sent as deltas
    completed: bool = False
    stopped_at: float | None = None  # loop time of speech_stopped (latency)


class RealtimeSession(Session):
    def __init__(self, channel: Channel, ctx: ProtocolContext, service: AudioService,
                 *, dialect: rm.Dialect, model: str | None) -> None:
        self.channel = channel
        self.ctx = ctx
        self.service = service
        self.settings = service.settings
        self.dialect = dialect
        self.session_id = rm.new_id("sess")
        default_model = model or next(iter(self.settings.models), ctx.hub.engine_name("asr"))
        self.config = rm.TranscriptionConfig(model=default_model,
                                             language=self.settings.language or None)
        self.state = State.IDLE
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._pump: StreamPump | None = None
        self._resampler_rate = 0
        self._stream_resampler: _StreamResampler | None = None
        self._denoise: Any = None
        self._items: list[Item] = []
        self._by_utterance: dict[int, Item] = {}
        self._last_item_id: str | None = None
        self._uncommitted = 0  # samples appended since the last commit / end of speech
        self._manual: list[Audio] = []
        self._manual_len = 0
        self.items_completed = 0
        self.deltas_sent = 0

    # ------------------------------------------------------------------ Session

    async def on_open(self) -> None:
        self.service.engine_for(self.config.model)
        self.channel.send_json(rm.session_event(True, self.session_id, self.config, self.dialect))

    async def on_text(self, text: str) -> None:
        event = rm.parse_event(text)
        kind = event["type"]
        async with self._lock:
            if self.state is State.CLOSED:
                return
            if kind in ("session.update", "transcription_session.update"):
                await self._update(event)
            elif kind == "input_audio_buffer.append":
                await self._append(event)
            elif kind == "input_audio_buffer.commit":
                await self._commit(event)
            elif kind == "input_audio_buffer.clear":
                await self._clear()
            else:
                raise rm.invalid(f"unknown or unsupported event type {kind!r} in a transcription "
                                 "session", param="type", code=rm.UNKNOWN_EVENT,
                                 event_id=event.get("event_id") if isinstance(event.get("event_id"), str) else None)

    async def on_binary(self, data: bytes) -> None:
        raise rm.invalid("binary frames are not part of the Realtime API: send "
                         "input_audio_buffer.append events (base64 audio)", code=rm.INVALID_EVENT)

    async def on_close(self, info: CloseInfo) -> None:
        async with self._lock:
            if info.shutdown and self._pump is not None:
                try:  # the finals of what was received, before the client sees 1001
                    await self._finish_stream()
                except Exception as exc:  # noqa: BLE001 - closing anyway
                    log.warning("realtime_flush_failed", error=repr(exc))
            self.state = State.CLOSED
            await self._release()

    def summary(self) -> dict[str, Any]:
        return {"dialect": self.dialect, "model": self.config.model,
                "items": self.items_completed, "deltas": self.deltas_sent}

    # ------------------------------------------------------------------ configuration

    async def _update(self, event: dict[str, Any]) -> None:
        config = rm.apply_update(self.config, event)
        if config.model != self.config.model:
            try:
                self.service.engine_for(config.model)
            except ProtocolError as err:
                raise rm.invalid(err.message, param="session.audio.input.transcription.model",
                                 event_id=event.get("event_id")) from None
        restart = (config.model, config.language, config.input_format, config.turn_detection,
                   config.prompt, config.noise_reduction) != (
            self.config.model, self.config.language, self.config.input_format,
            self.config.turn_detection, self.config.prompt, self.config.noise_reduction)
        if restart and self.state is State.LISTENING:
            await self._finish_stream()
            await self._release()
            self.state = State.IDLE
        if config.noise_reduction is not None and await self._denoiser() is None:
            config = rm.replace(config, noise_reduction=None)  # no noise suppressor in this hub
        self.config = config
        self.channel.send_json(rm.session_event(False, self.session_id, config, self.dialect))

    async def _denoiser(self) -> Any:
        try:
            return await self.ctx.hub.denoiser()
        except Exception as exc:  # noqa: BLE001 - not configured / not installed
            log.info("realtime_denoise_unavailable", error=str(exc))
            return None

    # ------------------------------------------------------------------ audio

    async def _append(self, event: dict[str, Any]) -> None:
        raw = rm.append_audio(event, self.config.input_format)
        if self.state is State.IDLE:
            await self._start()
        pcm = self._to_16k(raw)
        if self._denoise is not None and len(pcm):
            pcm = await self.ctx.executor.run(self._denoise.process, pcm, priority=Priority.LIVE,
                                              engine=self.ctx.hub.engine_name("denoise"))
        if not len(pcm):
            return
        self.audio_seconds += len(pcm) / SAMPLE_RATE
        self._uncommitted += len(pcm)
        if self.config.turn_detection is None:
            limit = int(self.settings.realtime_max_buffer_s * SAMPLE_RATE)
            if self._manual_len + len(pcm) > limit:
                raise rm.invalid(f"the input audio buffer holds at most "
                                 f"{self.settings.realtime_max_buffer_s:.0f} s: commit or clear it",
                                 code=rm.BUFFER_FULL, event_id=event.get("event_id"))
            self._manual.append(pcm)
            self._manual_len += len(pcm)
            return
        pump = self._pump
        assert pump is not None
        try:
            pump.feed(pcm)
        except BacklogFull as exc:
            raise rm.invalid(f"audio dropped: {exc}", code=rm.BUFFER_FULL) from None
        # Backpressure: stop reading the socket while too much audio waits for the engine.
        while pump.backlog_seconds >= self.settings.realtime_max_backlog_s:
            await pump.drain()

    def _to_16k(self, raw: Audio) -> Audio:
        """Resample in steps of whole blocks so that consecutive appends join seamlessly."""
        rate = self.config.input_rate
        if rate != self._resampler_rate:
            self._resampler_rate = rate
            self._stream_resampler = None if rate == SAMPLE_RATE else _StreamResampler(rate)
        if self._stream_resampler is None:
            return raw
        return self._stream_resampler.process(raw)

    async def _start(self) -> None:
        """Open the engine's stream (server VAD) or start buffering (manual commits)."""
        self._denoise = None
        if self.config.noise_reduction is not None:
            denoiser = await self._denoiser()
            if denoiser is not None:
                self._denoise = denoiser.open_stream()
        self._resampler_rate = 0
        if self.config.turn_detection is not None:
            engine_name = self.service.engine_for(self.config.model)
            hub = self.ctx.hub
            asr = await hub.asr(engine_name)
            vad = await hub.vad()
            language = self.config.language

            def build() -> TappedStream:
                tap = VADTap(vad.open_stream()) if vad is not None else None
                if tap is None:
                    raise EngineError("server VAD needs the hub's VAD engine ([engines] vad)")
                return TappedStream(asr.open_stream(language=language, vad=tap), tap)

            try:
                stream = await self.ctx.executor.run(build, priority=Priority.LIVE)
            except EngineError as exc:
                raise ProtocolError(rm.SERVER_ERROR, f"the recogniser is not available: {exc}") from None
            except ValueError as exc:
                raise rm.invalid(f"language: {exc}", param="session.audio.input.transcription.language") from None
            self._pump = StreamPump(self.ctx.executor, stream, self._on_results,  # type: ignore[arg-type]
                                    engine=engine_name,
                                    max_backlog_s=self.settings.realtime_max_backlog_s * 1.5)
        self.state = State.LISTENING

    async def _flush_denoiser(self) -> None:
        """The noise suppressor's delayed tail, before the audio is committed."""
        if self._denoise is None:
            return
        tail = await self.ctx.executor.run(self._denoise.flush, priority=Priority.LIVE,
                                           engine=self.ctx.hub.engine_name("denoise"))
        if len(tail):
            if self.config.turn_detection is None:
                self._manual.append(tail)
                self._manual_len += len(tail)
            elif self._pump is not None:
                self._pump.feed(tail)
        self._denoise = (await self._denoiser()).open_stream()

    async def _commit(self, event: dict[str, Any]) -> None:
        if self._uncommitted < MIN_COMMIT_S * SAMPLE_RATE:
            raise rm.invalid(f"buffer too small: at least {MIN_COMMIT_S * 1000:.0f} ms of audio "
                             "must be appended before a commit", code=rm.COMMIT_EMPTY,
                             event_id=event.get("event_id"))
        await self._flush_denoiser()
        if self.config.turn_detection is None:
            await self._transcribe_buffer()
            return
        await self._finish_stream()

    async def _clear(self) -> None:
        self._manual, self._manual_len = [], 0
        self._uncommitted = 0
        if self._pump is not None:
            await self._pump.reset()
            for item in self._items:
                if not item.completed and item.end is None:
                    item.completed = True  # dropped with its audio
            self._items = [i for i in self._items if not i.completed]
        self.channel.send_json(rm.event("input_audio_buffer.cleared"))

    async def _finish_stream(self) -> None:
        """End of input so far: finals for everything received (the stream stays usable)."""
        if self._pump is None:
            return
        open_before = any(i.end is None for i in self._items)
        try:
            await self._pump.finish()
        except (ExecutorBusy, ExecutorClosed) as exc:
            raise ProtocolError(rm.SERVER_BUSY, f"the server is busy: {exc}") from None
        if not open_before and self._uncommitted >= MIN_COMMIT_S * SAMPLE_RATE:
            # Audio without speech was committed: an item with an empty transcript.
            item = self._new_item(0)
            item.end = 0
            self._commit_item(item)
            self._complete(item, "")
        self._uncommitted = 0

    async def _transcribe_buffer(self) -> None:
        audio = self._manual[0] if len(self._manual) == 1 else np.concatenate(self._manual)
        self._manual, self._manual_len, self._uncommitted = [], 0, 0
        item = self._new_item(0)
        item.end = len(audio)
        self._commit_item(item)
        config = self.config
        engine_name = self.service.engine_for(config.model)
        started = self._loop.time()
        try:
            transcript = await self.ctx.infer(
                "asr", lambda engine, pcm: engine.transcribe(pcm, language=config.language,
                                                             prompt=config.prompt),
                audio, priority=Priority.LIVE, name=engine_name)
        except (ExecutorBusy, ExecutorClosed):
            raise ProtocolError(rm.SERVER_BUSY, "the server is busy; commit again later") from None
        except Exception as exc:  # noqa: BLE001 - told to the client as the item's failure
            log.error("realtime_transcription_failed", error=repr(exc))
            self.channel.send_json(rm.failed_event(item.item_id, f"transcription failed: "
                                                                 f"{exc.__class__.__name__}"))
            item.completed = True
            return
        finally:
            self.processing_seconds += self._loop.time() - started
        text = transcript.text.strip()
        if text:
            self._send_delta(item, text)
        self._complete(item, text)

    # ------------------------------------------------------------------ results

    async def _on_results(self, results: list[Any]) -> None:
        for result in results:
            if isinstance(result, VADEvent):
                self._on_vad(result)
            elif isinstance(result, Hypothesis):
                self._on_hypothesis(result)
        # An item whose speech ended without a final produced no words: its final would have
        # come in the same engine call as the end of speech.
        for item in self._items:
            if item.end is not None and not item.completed and item.utterance is None:
                self._complete(item, "")
        self._items = [i for i in self._items if not i.completed]

    def _on_vad(self, event: VADEvent) -> None:
        if event.kind == "start":
            if any(i.end is None for i in self._items):
                return  # already speaking
            item = self._new_item(event.sample)
            pad = int((self.config.turn_detection or {}).get("prefix_padding_ms", 0))
            self.channel.send_json(rm.event(
                "input_audio_buffer.speech_started", item_id=item.item_id,
                audio_start_ms=max(0, event.sample * 1000 // SAMPLE_RATE - pad)))
            return
        for item in self._items:
            if item.end is None:
                item.end = event.sample
                item.stopped_at = self._loop.time()
                self.channel.send_json(rm.event("input_audio_buffer.speech_stopped",
                                                item_id=item.item_id,
                                                audio_end_ms=event.sample * 1000 // SAMPLE_RATE))
                self._commit_item(item)
                self._uncommitted = 0

    def _on_hypothesis(self, hyp: Hypothesis) -> None:
        item = self._by_utterance.get(hyp.utterance)
        if item is None:
            item = self._bind(hyp)
        text = hyp.text.strip()
        if not hyp.is_final:
            words = text.split(" ")
            stable = " ".join(words[:-1]) if len(words) > 1 else ""  # the last word may change
            if stable and stable.startswith(item.sent) and len(stable) > len(item.sent):
                self._send_delta(item, stable)
            return
        if text.startswith(item.sent) and len(text) > len(item.sent):
            self._send_delta(item, text)
        if item.end is None:  # a long utterance the engine cut: this part is done
            item.end = int(hyp.end * SAMPLE_RATE)
            self._commit_item(item)
        self._complete(item, text)
        if item.stopped_at is not None:
            self.ctx.observe_final_latency(self._loop.time() - item.stopped_at)

    def _bind(self, hyp: Hypothesis) -> Item:
        """The item a new utterance of the engine belongs to: the latest that began at or
        before it and has no utterance yet; else (an utterance cut by the engine) a new one."""
        position = int(hyp.start * SAMPLE_RATE) + 1
        candidates = [i for i in self._items if i.start <= position and i.utterance is None
                      and not i.completed]
        if candidates:
            item = candidates[-1]
        else:
            item = self._new_item(int(hyp.start * SAMPLE_RATE))
            if any(i.end is None and i is not item for i in self._items):
                # The speech goes on in a new item: the open one continues as this one.
                for other in self._items:
                    if other is not item and other.end is None:
                        other.end = item.start
        item.utterance = hyp.utterance
        self._by_utterance[hyp.utterance] = item
        return item

    def _new_item(self, start: int) -> Item:
        item = Item(item_id=rm.new_id("item"), start=start)
        self._items.append(item)
        return item

    def _commit_item(self, item: Item) -> None:
        self.channel.send_json(rm.event("input_audio_buffer.committed", item_id=item.item_id,
                                        previous_item_id=self._last_item_id))
        self._last_item_id = item.item_id

    def _send_delta(self, item: Item, text: str) -> None:
        delta = text[len(item.sent):]
        item.sent = text
        self.deltas_sent += 1
        self.channel.send_json(rm.delta_event(item.item_id, delta))

    def _complete(self, item: Item, text: str) -> None:
        if item.completed:
            return
        item.completed = True
        self.items_completed += 1
        seconds = ((item.end or item.start) - item.start) / SAMPLE_RATE
        self.channel.send_json(rm.completed_event(item.item_id, text, max(0.0, seconds)))

    # ------------------------------------------------------------------ teardown

    async def _release(self) -> None:
        if self._pump is not None:
            pump, self._pump = self._pump, None
            await pump.close()
            self.processing_seconds += pump.processing_seconds
        self._items, self._by_utterance = [], {}
        self._manual, self._manual_len = [], 0


class _StreamResampler:
    """Consecutive chunks resampled as one signal (soxr's streaming resampler)."""

    def __init__(self, rate: int) -> None:
        import soxr

        self.rate = rate
        self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def process(self, pcm: Audio) -> Audio:
        if not len(pcm):
            return pcm
        return np.asarray(self._stream.resample_chunk(np.asarray(pcm, dtype=np.float32)),
                          dtype=np.float32)


__all__ = ["RealtimeSession", "TappedStream", "VADTap"]
